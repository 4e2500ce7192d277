"""A streamed chat completion: server-sent `chat.completion.chunk` events from a stream job's events.

The role comes first, then content deltas as the guard releases text, then the tool calls (if any) in one
delta, then an empty delta with the finish reason and the `guardrail` field, the usage chunk when
`stream_options.include_usage` asks, and `data: [DONE]`. An error after the first chunk is sent as an
`{"error": ...}` event before `[DONE]` (the status line has gone out already).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from guardrail.obs.streaming import unsent_tail
from guardrail.results import GuardResult
from guardrail.serve.errors import ApiError, from_exception
from guardrail.serve.protocol import chunk, finish_reason, guardrail_field, tool_call_dicts, usage
from guardrail.serve.worker import Job

__all__ = ["StreamReply", "event", "first_event"]


def event(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def first_event(job: Job, deadline: float) -> None:
    """Wait until the worker has validated and started the stream; its errors raise here (a real status)."""
    assert job.events is not None
    kind, value = await _next(job, deadline)
    if kind == "error":
        raise value
    if kind != "start":  # a stream that ended at once: put it back for the reply to read
        job.events.put_nowait((kind, value))


async def _next(job: Job, deadline: float) -> tuple[str, Any]:
    assert job.events is not None
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        return await asyncio.wait_for(job.events.get(), max(remaining, 0.0))
    except asyncio.TimeoutError:
        job.cancelled.set()
        raise ApiError(504, "the request ran past the server's request_timeout_s", code="timeout") from None


@dataclass
class StreamReply:
    """The SSE body of one stream job; `on_result`/`on_error` report the outcome (metrics)."""

    job: Job
    completion_id: str
    model: str
    include_usage: bool
    deadline: float

    def __post_init__(self) -> None:
        self.created = int(time.time())
        self.result: GuardResult | None = None
        self.error: ApiError | None = None

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
        return event(chunk(self.completion_id, self.model, self.created, delta, finish, **extra))

    async def body(self) -> AsyncIterator[str]:
        sent = ""
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            while True:
                try:
                    kind, value = await _next(self.job, self.deadline)
                except ApiError as exc:
                    kind, value = "error", exc
                if kind == "chunk":
                    sent += value
                    yield self._chunk({"content": value})
                elif kind == "done":
                    self.result = value
                    break
                elif kind == "error":
                    self.error = from_exception(value)
                    yield event(self.error.body)
                    yield event("[DONE]")
                    return
            for text in self._closing(value, sent):
                yield text
        finally:
            self.job.cancelled.set()  # a client that left stops the generation; harmless once finished

    def _closing(self, result: GuardResult, sent: str) -> list[str]:
        """The text held back until the end (an incomplete character, a blocked request's message), the tool
        calls, the finish reason with the guard's decision, the usage, and [DONE]."""
        out = []
        tail = unsent_tail(result.text, sent)
        if tail:
            out.append(self._chunk({"content": tail}))
        calls = tool_call_dicts(result)
        if calls:
            out.append(self._chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]}))
        out.append(self._chunk({}, finish_reason(result), guardrail=guardrail_field(result, self.model)))
        if self.include_usage:
            out.append(self._chunk(None, usage=usage(result)))
        out.append(event("[DONE]"))
        return out
