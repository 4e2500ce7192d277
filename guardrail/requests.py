"""What one request to a guarded model is, and the checks every request passes before it runs:
the types at the bottom of the package."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from guardrail.audio import AudioSource, load_audio
from guardrail.conversation import (
    ResponseFormat,
    ToolChoice,
    Turn,
    parse_messages,
    parse_response_format,
    parse_tool_choice,
    parse_tools,
)
from guardrail.errors import RequestError

_KEYS = ("audio", "text", "messages", "tools", "tool_choice", "response_format")


@dataclass(frozen=True)
class Request:
    """One request: a user turn (optional audio, mono float32 at the model's rate, then text) after the
    conversation's earlier turns (`history`), with the tools the model may call. A conversation that ends
    with a tool result has its turns all in `history` and no text or audio of its own."""

    text: str = ""
    audio: np.ndarray | None = None
    history: tuple[Turn, ...] = ()
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: ToolChoice = "auto"
    response_format: ResponseFormat = "text"  # "json_object": the answer opens with "{"

    @property
    def turns(self) -> tuple[Turn, ...]:
        """The whole conversation: the history, then the user turn (none after a history that ends with a
        tool result, when the request has no text or audio of its own)."""
        if self.history and not self.text and self.audio is None:
            return self.history
        return (*self.history, Turn("user", self.text, self.audio))

    @property
    def audios(self) -> list[np.ndarray]:
        """The conversation's clips, in order."""
        return [t.audio for t in self.turns if t.audio is not None]


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
    'audio' and/or 'text', or with 'messages' (a conversation, see `guardrail.conversation`), and optionally
    'tools', 'tool_choice' and 'response_format'; or a `Request` (whose audio arrays are taken to be at the
    model's rate). Text over `max_text_chars` (all turns together) is refused before it is tokenized; a single
    turn's, before its audio is decoded too (a message list's clips are decoded as its turns are parsed)."""
    if isinstance(raw, Mapping) and raw.get("messages") is not None:
        return _conversation_request(raw, index, adapter, processor, max_audio_seconds, max_text_chars)
    source: AudioSource | None
    if isinstance(raw, Request):
        if raw.history or raw.tools:
            _check_text_size(sum(len(t.text) for t in raw.turns), index, max_text_chars)
            return raw
        text = raw.text
        source = (raw.audio, adapter.sampling_rate(processor)) if isinstance(raw.audio, np.ndarray) else raw.audio
    elif isinstance(raw, Mapping):
        _check_keys(raw, index)
        if any(raw.get(k) is not None for k in ("tools", "tool_choice", "response_format")):
            as_messages = {"messages": [_user_message(raw)], **{k: raw.get(k) for k in _KEYS[3:]}}
            return _conversation_request(as_messages, index, adapter, processor, max_audio_seconds, max_text_chars)
        text, source = raw.get("text") or "", raw.get("audio")
    else:
        raise RequestError(f"request {index} is a {type(raw).__name__}; pass a dict with 'audio' and/or 'text'")
    if not isinstance(text, str):
        raise RequestError(f"request {index}: text must be a str, got {type(text).__name__}")
    _check_text_size(len(text), index, max_text_chars)
    if source is None and not text.strip():
        raise RequestError(f"request {index} has neither audio nor text; pass at least one")
    audio = None
    if source is not None:
        adapter.require_audio_support(f"request {index}")
        audio = load_audio(source, target_sr=adapter.sampling_rate(processor), max_seconds=max_audio_seconds)
    return Request(text=text, audio=audio)


def _check_keys(raw: Mapping[str, Any], index: int) -> None:
    unknown = set(raw) - set(_KEYS)
    if unknown:
        keys = sorted(unknown, key=repr)
        raise RequestError(f"request {index} has unknown keys {keys}; accepted: {', '.join(map(repr, _KEYS))}")


def _check_text_size(size: int, index: int, limit: int | None) -> None:
    if limit is not None and size > limit:  # before tokenizing: that is the cost
        raise RequestError(
            f"request {index} has {size} characters of text; the policy allows {limit} "
            "(limits.max_text_chars): shorten the text or raise the limit"
        )


def _user_message(raw: Mapping[str, Any]) -> dict[str, Any]:
    """{"audio", "text"} as one user message."""
    blocks: list[dict[str, Any]] = [{"type": "audio", "audio": raw["audio"]}] if raw.get("audio") is not None else []
    return {"role": "user", "content": [*blocks, {"type": "text", "text": raw.get("text") or ""}]}


def _conversation_request(
    raw: Mapping[str, Any],
    index: int,
    adapter: AudioSupport,
    processor: Any,
    max_audio_seconds: float | None,
    max_text_chars: int | None,
) -> Request:
    """A request given as a message list: its turns parsed, audio decoded, the last user turn as text/audio."""
    _check_keys(raw, index)
    if raw.get("text") or raw.get("audio") is not None:
        raise RequestError(f"request {index} has both 'messages' and 'text'/'audio'; put the user turn in messages")

    def load(source: Any, where: str) -> np.ndarray:
        adapter.require_audio_support(where)
        if source is None:
            raise RequestError(f"{where}: an audio block needs 'audio' (a path, bytes or (array, rate))")
        return load_audio(source, target_sr=adapter.sampling_rate(processor), max_seconds=max_audio_seconds)

    turns = parse_messages(raw["messages"], index, load)
    _check_text_size(sum(len(t.text) for t in turns), index, max_text_chars)
    tools = parse_tools(raw.get("tools"), index)
    choice = parse_tool_choice(raw.get("tool_choice"), tools, index)
    response_format = parse_response_format(raw.get("response_format"), index)
    if turns[-1].role == "user":
        return Request(turns[-1].text, turns[-1].audio, turns[:-1], tools, choice, response_format)
    return Request("", None, turns, tools, choice, response_format)


def request_dict(audio: AudioSource | None, text: str, messages: Any = None, **options: Any) -> dict[str, Any]:
    """One request as a raw dict from `Guard.generate`'s arguments: audio and text, or messages, and the
    `options` given (tools, tool_choice, response_format)."""
    raw: dict[str, Any] = {"messages": messages} if messages is not None else {"audio": audio, "text": text}
    if messages is not None and (audio is not None or text):
        raw.update(audio=audio, text=text)  # refused by parse_request, with the reason
    return {**raw, **{k: v for k, v in options.items() if v is not None}}


def request_fields(raw: Mapping[str, Any] | Request) -> dict[str, Any]:
    """A request as it was given, as a dict ('text', 'audio'): what a decision log may show of it."""
    if isinstance(raw, Request):
        return {"text": raw.text, "audio": raw.audio, **({"history": raw.history} if raw.history else {})}
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


MAX_STOP_STRINGS = 16


def check_stop(stop: object) -> tuple[str, ...]:
    """The call's stop strings: None, a string, or a list of non-empty strings (at most MAX_STOP_STRINGS)."""
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, Sequence)
        or len(stops) > MAX_STOP_STRINGS
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise RequestError(
            f"stop={_shown(stop)}: pass a string or a list of at most {MAX_STOP_STRINGS} non-empty strings"
        )
    return tuple(dict.fromkeys(stops))


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
