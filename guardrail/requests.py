"""What one request to a guarded model is, and the checks every request passes before it runs:
the types at the bottom of the package."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from guardrail.audio import AudioSource, load_audio
from guardrail.errors import RequestError


@dataclass(frozen=True)
class Request:
    """One user turn: optional audio (mono float32 at the model's rate) then text."""

    text: str
    audio: np.ndarray | None = None


class AudioSupport(Protocol):
    """What parsing a request needs from the model's adapter (`guardrail.models.adapter.Adapter`)."""

    def require_audio_support(self, what: str) -> None: ...

    def sampling_rate(self, processor: Any) -> int: ...


def parse_request(
    raw: Mapping[str, Any] | Request,
    index: int,
    *,
    adapter: AudioSupport,
    processor: Any,
    max_audio_seconds: float | None = None,
    max_text_chars: int | None = None,
) -> Request:
    """Request `index` of a batch checked and its audio decoded at the model's rate: a mapping with
    'audio' and/or 'text', or a `Request` (whose audio array is taken to be at the model's rate).
    Text over `max_text_chars` is refused before anything else is done with it."""
    source: AudioSource | None
    if isinstance(raw, Request):
        text = raw.text
        source = (raw.audio, adapter.sampling_rate(processor)) if isinstance(raw.audio, np.ndarray) else raw.audio
    elif isinstance(raw, Mapping):
        unknown = set(raw) - {"audio", "text"}
        if unknown:
            keys = sorted(unknown, key=repr)
            raise RequestError(f"request {index} has unknown keys {keys}; accepted: 'audio', 'text'")
        text, source = raw.get("text") or "", raw.get("audio")
    else:
        raise RequestError(f"request {index} is a {type(raw).__name__}; pass a dict with 'audio' and/or 'text'")
    if not isinstance(text, str):
        raise RequestError(f"request {index}: text must be a str, got {type(text).__name__}")
    if max_text_chars is not None and len(text) > max_text_chars:  # before tokenizing: that is the cost
        raise RequestError(
            f"request {index} has {len(text)} characters of text; the policy allows {max_text_chars} "
            "(limits.max_text_chars): shorten the text or raise the limit"
        )
    if source is None and not text.strip():
        raise RequestError(f"request {index} has neither audio nor text; pass at least one")
    audio = None
    if source is not None:
        adapter.require_audio_support(f"request {index}")
        audio = load_audio(source, target_sr=adapter.sampling_rate(processor), max_seconds=max_audio_seconds)
    return Request(text=text, audio=audio)


def request_fields(raw: Mapping[str, Any] | Request) -> dict[str, Any]:
    """A request as it was given, as a dict ('text', 'audio'): what a decision log may show of it."""
    if isinstance(raw, Request):
        return {"text": raw.text, "audio": raw.audio}
    return dict(raw)


def check_batch_size(size: int, limit: int, policy_name: str) -> None:
    """Raise RequestError for a batch larger than the policy's limits.max_batch."""
    if size > limit:
        raise RequestError(
            f"{size} requests in one batch; policy {policy_name!r} allows "
            f"{limit} (limits.max_batch): split the batch or raise the limit"
        )


def check_max_new_tokens(requested: object, limit: int, policy_name: str) -> int:
    """The token budget of a call: `requested`, an int within the policy's limits.max_new_tokens (the limit
    when None). Anything else (a float, NaN, a bool, a string) is a RequestError: NaN would slip past a
    range check and generate without end."""
    if requested is None:
        return limit
    if isinstance(requested, bool) or not isinstance(requested, numbers.Integral) or not 1 <= int(requested) <= limit:
        raise RequestError(
            f"max_new_tokens={_shown(requested)} is not an int in 1..{limit} (policy "
            f"{policy_name!r} limits.max_new_tokens); pass a whole number of tokens in that range or raise the limit"
        )
    return int(requested)


# generate() arguments that change how many output rows a batch returns; rows must map 1:1 to requests
ROW_COUNT_KWARGS = ("num_return_sequences",)


def check_one_row_per_request(generate_kwargs: Mapping[str, Any], default_config: Any) -> None:
    """Raise RequestError when `generate()` would return other than one sequence per request
    (num_return_sequences != 1, in the arguments, a `generation_config` there, or the model's default)."""
    config = generate_kwargs.get("generation_config") or default_config
    for name in ROW_COUNT_KWARGS:
        value = generate_kwargs.get(name, getattr(config, name, 1))
        if value is not None and (isinstance(value, bool) or value != 1):
            raise RequestError(
                f"{name}={_shown(value)}: a guarded call returns one answer per request; "
                f"send the request several times (with do_sample=True) for several answers"
            )


def check_prompt_tokens(lengths: Sequence[int], limit: int, why: str) -> None:
    """Raise RequestError for a prompt of more than `limit` tokens; `why` says where the limit comes from."""
    for index, length in enumerate(lengths):
        if length > limit:
            raise RequestError(
                f"request {index} has {length} prompt tokens; at most {limit} are allowed ({why}): "
                "shorten the request (text or audio)"
            )


def _shown(value: object) -> str:
    """A value as an error message shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
