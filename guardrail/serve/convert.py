"""A chat completion request -> one guard request (`Guard.generate_batch`'s dict) and its generation
parameters.

Messages keep their roles (system, developer as system, user, assistant with tool_calls, tool); the guard
renders the whole conversation through the model's chat template, after the policy's own system prompt.
User content is text parts and at most one audio clip per message: `input_audio` ({"data": base64,
"format": wav|mp3|flac|ogg}) or `audio_url` with a `data:` URL, or a `file://` URL under the policy's
`input.audio_dirs`. The clip is decoded (and its length checked) by the guard on the worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from guardrail.errors import RequestError, UnsupportedContentError
from guardrail.policy import Policy
from guardrail.policy.audio_files import AudioFiles, audio_from_url, decode_base64
from guardrail.requests import check_max_new_tokens, check_stop
from guardrail.serve.protocol import ChatCompletionRequest

__all__ = ["AUDIO_FORMATS", "GenParams", "gen_params", "guard_request"]

AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


@dataclass(frozen=True)
class GenParams:
    """What `generate_batch` takes besides the requests; requests with equal params can share a batch."""

    max_new_tokens: int
    stop: tuple[str, ...] = ()
    seed: int | None = None
    sampling: tuple[tuple[str, float], ...] = ()  # empty: greedy
    min_new_tokens: int = 0

    def kwargs(self) -> dict[str, Any]:
        sampling = dict(self.sampling)
        extra: dict[str, Any] = {"do_sample": True, **sampling} if sampling else {}
        if self.min_new_tokens:
            extra["min_new_tokens"] = self.min_new_tokens
        return {"max_new_tokens": self.max_new_tokens, "stop": list(self.stop) or None, "seed": self.seed, **extra}


def gen_params(body: ChatCompletionRequest, policy: Policy) -> GenParams:
    """The checked parameters: one answer (n=1), max tokens within the policy's limit, stop strings, seed, and
    sampling (temperature absent or 0: greedy; above 0: sampled, with top_p)."""
    if body.n not in (None, 1):
        raise RequestError(f"n={body.n}: the server returns one choice per request; send the request n times")
    if body.logprobs:
        raise RequestError("logprobs are not returned by this server; leave logprobs unset")
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    tokens = check_max_new_tokens(requested, policy.limits.max_new_tokens, policy.name)
    if body.min_tokens is not None and body.min_tokens > tokens:
        raise RequestError(f"min_tokens={body.min_tokens} is above the max tokens ({tokens}); lower min_tokens")
    sampling: tuple[tuple[str, float], ...] = ()
    if body.temperature:
        sampling = (("temperature", body.temperature),) + ((("top_p", body.top_p),) if body.top_p else ())
    return GenParams(tokens, check_stop(body.stop), body.seed, sampling, body.min_tokens or 0)


def guard_request(body: ChatCompletionRequest, files: AudioFiles) -> dict[str, Any]:
    """The guard's request dict: messages (audio as bytes), tools, tool_choice and response_format."""
    request: dict[str, Any] = {"messages": [_message(m, k, files) for k, m in enumerate(body.messages)]}
    for key in ("tools", "tool_choice", "response_format"):
        if getattr(body, key) is not None:
            request[key] = getattr(body, key)
    return request


def _message(raw: Mapping[str, Any], k: int, files: AudioFiles) -> dict[str, Any]:
    where = f"messages[{k}]"
    role = ROLES.get(str(raw.get("role")))
    if role is None:
        raise RequestError(f"{where} has role {raw.get('role')!r}; accepted: {', '.join(ROLES)}")
    # None-valued fields (refusal, audio, name...) are what clients echo back from earlier answers
    message = {key: value for key, value in raw.items() if value is not None} | {"role": role}
    content = raw.get("content")
    if isinstance(content, list):
        message["content"] = [_part(part, f"{where}.content[{b}]", role, files) for b, part in enumerate(content)]
    return message


def _part(part: Any, where: str, role: str, files: AudioFiles) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind == "text":
        return {"type": "text", "text": part.get("text")}
    if kind in ("input_audio", "audio_url") and role != "user":
        raise UnsupportedContentError(f"{where}: audio is accepted in user messages only")
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, Mapping) or "data" not in audio:
            raise UnsupportedContentError(f"{where}: input_audio must be {{'data': <base64>, 'format': 'wav'}}")
        fmt = audio.get("format")
        if fmt is not None and str(fmt).lower() not in AUDIO_FORMATS:
            raise UnsupportedContentError(f"{where}: audio format {fmt!r}; accepted: {', '.join(AUDIO_FORMATS)}")
        return {"type": "audio", "audio": decode_base64(audio["data"], where)}
    if kind == "audio_url":
        url = part.get("audio_url")
        url = url.get("url") if isinstance(url, Mapping) else url
        if not isinstance(url, str):
            raise UnsupportedContentError(f"{where}: audio_url must be {{'url': 'data:audio/wav;base64,...'}}")
        return {"type": "audio", "audio": audio_from_url(url, files, where)}
    raise UnsupportedContentError(
        f"{where}: content part of type {kind!r} is not supported; accepted: text, input_audio "
        "({'data': <base64>, 'format': 'wav'|'mp3'|'flac'|'ogg'}) and audio_url (data: or file:// URL)"
    )
