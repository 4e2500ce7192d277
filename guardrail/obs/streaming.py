"""Token streaming for one guarded request: text chunks as the model produces them; and the
clock every guarded generation runs with (prefill and decode times).

Generation runs in a worker thread (the steering state follows it there); the caller iterates
chunks. The gate decides at prefill exactly as in `Guard.generate`, so streaming never bypasses
the guard. After iteration, `.result` holds the complete `GuardResult`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import torch
from transformers.generation.streamers import BaseStreamer

from guardrail.results import GuardResult, Timings

_DONE = object()


class TokenQueue(BaseStreamer):
    """Receives generated token ids (batch 1) and queues decoded text increments."""

    def __init__(self, decode: Callable[[list[int]], str], eos: set[int]):
        self.decode, self.eos = decode, eos
        self.queue: queue.Queue = queue.Queue()
        self._ids: list[int] = []
        self._sent = ""
        self._prompt_seen = False
        self._stopped = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate first hands over the prompt
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if self._stopped or token in self.eos:
                self._stopped = True
                return
            self._ids.append(token)
        text = self.decode(self._ids)
        # Hold back an incomplete multi-byte character until its last byte arrives.
        if text.startswith(self._sent) and not text.endswith("\ufffd") and len(text) > len(self._sent):
            self.queue.put(text[len(self._sent) :])
            self._sent = text

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


class GuardStream:
    """Iterate text chunks of one guarded generation; `.result` is set when it finishes."""

    def __init__(self, run: Callable[[BaseStreamer], GuardResult], streamer: TokenQueue):
        self._streamer = streamer
        self.result: GuardResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, args=(run,), daemon=True)
        self._thread.start()

    def _work(self, run: Callable[[BaseStreamer], GuardResult]) -> None:
        try:
            self.result = run(self._streamer)
        except BaseException as exc:  # re-raised in the consumer's thread
            self._error = exc
        finally:
            self._streamer.queue.put(_DONE)

    def __iter__(self) -> Iterator[str]:
        while (chunk := self._streamer.queue.get()) is not _DONE:
            yield chunk
        self._thread.join()
        if self._error is not None:
            raise self._error
        final = self.result.text if self.result is not None else ""
        if final.startswith(self._streamer._sent) and len(final) > len(self._streamer._sent):
            yield final[len(self._streamer._sent) :]  # a held-back tail, or a blocked request's message
