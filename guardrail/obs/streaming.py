"""Token streaming for guarded requests: text chunks as the model produces them (one request's `GuardStream`,
or per-row streamers and cancel events inside one batched generation: `RowControls`); and the clock every
guarded generation runs with (prefill and decode times).

Generation runs in a worker thread (the steering state follows it there); the caller iterates
chunks. The gate decides at prefill exactly as in `Guard.generate`, so streaming never bypasses
the guard. After iteration, `.result` holds the complete `GuardResult`. A consumer that stops early
(`close()`, leaving a `with` block, breaking out of the loop, or dropping the stream) stops generation
at the next token; `.result` is then the partial answer, with finish_reason "cancelled".
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from guardrail.errors import RequestError
from guardrail.results import GuardResult, Timings, first_stop

_DONE = object()


def unsent_tail(final: str, sent: str) -> str:
    """The end of an answer's `final` text that its stream has not shown after `sent`: text held back until the
    end (an incomplete character, a possible marker), or a blocked request's message; "" when nothing is left."""
    return final[len(sent) :] if final.startswith(sent) else ""


class RowStops(StoppingCriteria):
    """Per-row cancellation of a batched generation: row i ends at its next token once `events[i]` is set
    (another thread sets it: a stream's consumer that left, a client that disconnected)."""

    def __init__(self, events: Sequence[threading.Event | None]):
        self.events = list(events)
        self.lengths: list[int | None] = [None] * len(self.events)  # the row's length when it was cancelled

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        now = [event is not None and event.is_set() for event in self.events]
        if not any(now):  # the usual step: no list copied to the device
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row, is_set in enumerate(now):
            if is_set and self.lengths[row] is None:
                self.lengths[row] = input_ids.shape[1]
        return torch.tensor(now, dtype=torch.bool, device=input_ids.device)

    def cut(self, row: int, prompt_width: int) -> int | None:
        """How many new tokens `row` had made when it was cancelled (the rest is padding); None: never cancelled."""
        length = self.lengths[row]
        return None if length is None else length - prompt_width

    def generate_kwargs(self, generate_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """`stopping_criteria` with this one after the caller's, when any row can be cancelled."""
        if not any(self.events):
            return {}
        return {"stopping_criteria": StoppingCriteriaList([*(generate_kwargs.get("stopping_criteria") or []), self])}


class RowStreams(BaseStreamer):
    """Hands each row of a batched generation to its own listener (None: a row nobody streams): the prompt
    (batch, seq) first, then each step's new tokens (batch,)."""

    def __init__(self, listeners: Sequence[BaseStreamer | None]):
        self.listeners = list(listeners)

    def put(self, value: torch.Tensor) -> None:
        rows = value if value.dim() > 1 else value.unsqueeze(-1)
        for listener, row in zip(self.listeners, rows):
            if listener is not None:
                listener.put(row.unsqueeze(0))

    def end(self) -> None:
        for listener in self.listeners:
            if listener is not None:
                listener.end()


@dataclass
class RowControls:
    """A batched call's per-request streamers and cancel events (`Guard.generate_batch`), beside the caller's
    own generate-wide `streamer`."""

    streamers: list[BaseStreamer | None]
    cancel: list[threading.Event | None]
    shared: BaseStreamer | None

    @classmethod
    def of(
        cls,
        size: int,
        streamers: Sequence[BaseStreamer | None] | None,
        cancel: Sequence[threading.Event | None] | None,
        generate_kwargs: Mapping[str, Any],
    ) -> RowControls:
        rows = cls(list(streamers or [None] * size), list(cancel or [None] * size), generate_kwargs.get("streamer"))
        if len(rows.streamers) != size or len(rows.cancel) != size:
            raise RequestError(f"streamers and cancel need one entry per request ({size}), or none")
        if rows.shared is not None and any(rows.streamers):
            raise RequestError("pass per-request streamers or one generate-wide streamer, not both")
        return rows

    def subset(self, keep: Sequence[int]) -> tuple[BaseStreamer | None, RowStops]:
        """The streamer and the stopping criterion of the rows that generate (`keep`: their request indices)."""
        listeners = [self.streamers[i] for i in keep]
        streamer = RowStreams(listeners) if any(listeners) else self.shared
        return streamer, RowStops([self.cancel[i] for i in keep])


class TokenQueue(BaseStreamer):
    """Receives generated token ids (batch 1) and queues decoded text increments (or hands them to `sink`);
    `stop` is the event that ends the generation when its consumer leaves (`Guard.generate_batch(cancel=...)`),
    `on_open` is called when generation starts (the prompt passed every check). Text from the first of the
    `stops` strings on is never queued, nor is text from one of the `holds` markers on (tool-call markup; with
    holds, an answer that opens with "{" is held whole too); a tail that could still become one of them waits
    for the next token."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        eos: set[int],
        stops: Sequence[str] = (),
        holds: Sequence[str] = (),
        *,
        sink: Callable[[str], None] | None = None,
        on_open: Callable[[], None] | None = None,
    ):
        self.decode, self.eos = decode, eos
        self.markers = (*stops, *holds)
        self.hold_json = bool(holds)  # an answer that opens with "{" may be an untagged tool call: held whole
        self.stop = threading.Event()
        self.queue: queue.Queue = queue.Queue()
        self.sink = sink or self.queue.put
        self.on_open = on_open
        self._ids: list[int] = []
        self._sent = ""
        self._prompt_seen = False
        self._stopped = False

    @property
    def sent(self) -> str:
        """The text queued so far."""
        return self._sent

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate first hands over the prompt
            self._prompt_seen = True
            if self.on_open is not None:
                self.on_open()
            return
        for token in value.reshape(-1).tolist():
            if self._stopped or token in self.eos:
                self._stopped = True
                return
            self._ids.append(token)
        text = self._shown(self.decode(self._ids))
        # Hold back an incomplete multi-byte character until its last byte arrives.
        if text.startswith(self._sent) and not text.endswith("\ufffd") and len(text) > len(self._sent):
            self.sink(text[len(self._sent) :])
            self._sent = text

    def _shown(self, text: str) -> str:
        """`text` up to the first marker, less a tail that a marker may still start with."""
        if not self.markers:
            return text
        if self.hold_json and text.lstrip()[:1] == "{":
            return ""
        cut = first_stop(text, self.markers)
        if cut is not None:
            return text[:cut]
        tail = max((k for m in self.markers for k in range(1, len(m)) if text.endswith(m[:k])), default=0)
        return text[: len(text) - tail]

    def end(self) -> None:
        pass


class GenerationClock(BaseStreamer):
    """Receives the prompt, then each new token (the first new token ends prefill), and hands
    everything on to `listener` (e.g. a `TokenQueue`)."""

    def __init__(self, listener: BaseStreamer | None = None) -> None:
        self.start = time.perf_counter()
        self.first_token: float | None = None
        self._calls = 0
        self._listener = listener

    def put(self, value: torch.Tensor) -> None:
        self._calls += 1
        if self._calls == 2:
            self.first_token = time.perf_counter()
        if self._listener is not None:
            self._listener.put(value)

    def end(self) -> None:
        if self._listener is not None:
            self._listener.end()

    def timings(self, now: float, started: float) -> Timings:
        """Prefill and decode time until `now`, and the total since the call `started` (perf_counter)."""
        first = self.first_token or now
        return Timings(
            prefill_ms=(first - self.start) * 1e3, decode_ms=(now - first) * 1e3, total_ms=(now - started) * 1e3
        )


class StreamWork:
    """What the worker thread of a `GuardStream` touches (not the stream itself, so that a stream nobody
    holds any more can be collected, and its finalizer stop the generation)."""

    def __init__(self, streamer: TokenQueue) -> None:
        self.streamer = streamer
        self.result: GuardResult | None = None
        self.error: BaseException | None = None

    def run(self, generate: Callable[[BaseStreamer], GuardResult]) -> None:
        try:
            self.result = generate(self.streamer)
        except BaseException as exc:  # re-raised in the consumer's thread
            self.error = exc
        finally:
            self.streamer.queue.put(_DONE)


class GuardStream:
    """Iterate text chunks of one guarded generation; `.result` is set when it finishes.

    `close()` (or leaving a `with` block, or breaking out of the loop) stops generation at the next
    token and waits for the worker; a stream that is garbage-collected unfinished is stopped too.
    """

    def __init__(self, run: Callable[[BaseStreamer], GuardResult], streamer: TokenQueue):
        self._streamer = streamer
        self._work = StreamWork(streamer)
        self._drained = False
        self._thread = threading.Thread(target=self._work.run, args=(run,), daemon=True, name="guardrail-stream")
        self._thread.start()
        weakref.finalize(self, streamer.stop.set).atexit = False

    @property
    def result(self) -> GuardResult | None:
        """The complete result once generation has ended (the partial answer of a closed stream)."""
        return self._work.result

    def close(self, timeout: float | None = None) -> None:
        """Stop generating at the next token and wait (at most `timeout` s) for the worker to end.
        Harmless on a finished stream."""
        self._streamer.stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> GuardStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        if self._drained:
            return
        finished = False
        try:
            while (chunk := self._streamer.queue.get()) is not _DONE:
                yield chunk
            finished = True
        finally:
            if not finished:  # the consumer left early (break, close, garbage collection): stop generating
                self._streamer.stop.set()
        self._drained = True
        self._thread.join()
        if self._work.error is not None:
            raise self._work.error
        tail = unsent_tail(self.result.text if self.result is not None else "", self._streamer.sent)
        if tail:
            yield tail
