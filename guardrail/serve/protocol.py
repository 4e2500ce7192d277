"""OpenAI's chat-completions wire format: the request as the server validates it, and the response, the
stream's chunks and the `guardrail` field built from a `GuardResult`."""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from guardrail.results import GuardResult

__all__ = [
    "ChatCompletionRequest",
    "GuardrailOptions",
    "StreamOptions",
    "chunk",
    "completion",
    "finish_reason",
    "guardrail_field",
    "model_list",
    "tool_call_dicts",
    "usage",
]


class StreamOptions(BaseModel):
    include_usage: bool = False


class GuardrailOptions(BaseModel):
    """`extra_body={"guardrail": {...}}`: the served deployment id whose policy this request runs under."""

    model_config = ConfigDict(extra="forbid")
    policy: str | None = None


class ChatCompletionRequest(BaseModel):
    """The fields the server reads. Others OpenAI defines (user, metadata, store, penalties...) are accepted
    and ignored; those whose meaning the server cannot honour are refused by `guardrail.serve.convert`."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    min_tokens: int | None = Field(default=None, ge=0)  # vLLM's extra parameter: EOS suppressed before it
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    guardrail: GuardrailOptions | None = None
    logprobs: bool | None = None


def finish_reason(result: GuardResult) -> str:
    """OpenAI's finish reason: "tool_calls", "length", "content_filter" (blocked by the gate) or "stop"."""
    if result.tool_calls:
        return "tool_calls"
    reason = result.decision.finish_reason
    if reason == "blocked":
        return "content_filter"
    return "length" if reason == "length" else "stop"


def tool_call_dicts(result: GuardResult) -> list[dict[str, Any]]:
    """The answer's tool calls in OpenAI's form, each with an id (made up when the model gave none)."""
    calls = [call.to_dict() for call in result.tool_calls]
    for call in calls:
        call["id"] = call["id"] or f"call_{uuid.uuid4().hex[:24]}"
    return calls


def usage(result: GuardResult) -> dict[str, int]:
    d = result.decision
    return {
        "prompt_tokens": d.prompt_tokens,
        "completion_tokens": d.completion_tokens,
        "total_tokens": d.prompt_tokens + d.completion_tokens,
    }


def guardrail_field(result: GuardResult, deployment: str) -> dict[str, Any]:
    """What the guard decided for this request (`Decision`), as the response's `guardrail` field."""
    d = result.decision
    return {
        "deployment": deployment,
        "policy": d.policy,
        "steered": d.steered,
        "blocked": d.blocked,
        "probe_score": d.probe_score,
        "reason": d.reason,
        "request_id": d.request_id,
    }


def completion(result: GuardResult, completion_id: str, model: str, created: int) -> dict[str, Any]:
    """A `chat.completion` object."""
    calls = tool_call_dicts(result)
    message: dict[str, Any] = {"role": "assistant", "content": result.text if result.text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(result), "logprobs": None}],
        "usage": usage(result),
        "guardrail": guardrail_field(result, model),
    }


def chunk(
    completion_id: str, model: str, created: int, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A `chat.completion.chunk`; `delta` None: the usage chunk (no choices)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
        **extra,
    }


def model_list(ids: list[str], owner: str = "guardrail") -> dict[str, Any]:
    created = int(time.time())
    return {
        "object": "list",
        "data": [{"id": i, "object": "model", "created": created, "owned_by": owner} for i in ids],
    }
