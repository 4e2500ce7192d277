"""What one request to a guarded model is, and the checks every request passes before it runs:
the types at the bottom of the package."""

from __future__ import annotations

from collections.abc import Mapping
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
) -> Request:
    """Request `index` of a batch checked and its audio decoded at the model's rate: a mapping with
    'audio' and/or 'text', or a `Request` (whose audio array is taken to be at the model's rate)."""
    source: AudioSource | None
    if isinstance(raw, Request):
        text = raw.text
        source = (raw.audio, adapter.sampling_rate(processor)) if isinstance(raw.audio, np.ndarray) else raw.audio
    elif isinstance(raw, Mapping):
        unknown = set(raw) - {"audio", "text"}
        if unknown:
            raise RequestError(f"request {index} has unknown keys {sorted(unknown)}; accepted: 'audio', 'text'")
        text, source = raw.get("text") or "", raw.get("audio")
    else:
        raise RequestError(f"request {index} is a {type(raw).__name__}; pass a dict with 'audio' and/or 'text'")
    if not isinstance(text, str):
        raise RequestError(f"request {index}: text must be a str, got {type(text).__name__}")
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


def check_max_new_tokens(requested: int | None, limit: int, policy_name: str) -> int:
    """The token budget of a call: `requested`, within the policy's limits.max_new_tokens (the limit when None)."""
    if requested is None:
        return limit
    if requested < 1 or requested > limit:
        raise RequestError(
            f"max_new_tokens={requested} is outside 1..{limit} (policy "
            f"{policy_name!r} limits.max_new_tokens); ask for less or raise the limit"
        )
    return requested
