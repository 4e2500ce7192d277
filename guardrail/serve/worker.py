"""The inference worker: one thread owns the model's generation, fed by a bounded asyncio queue.

Requests that arrive within `max_wait_ms` of each other (or wait while the worker is busy) are coalesced,
streamed or not: one `Guard.generate_batch` per deployment and parameter set, up to `max_batch` (and the
policy's `limits.max_batch`), each request keeping its own gate decision and, when streamed, its own text
streamer. A request whose input is bad gets its error alone (parsed one by one first; a batch that still fails
on one request's input is rerun a request at a time). A request whose client left (or whose time ran out) is
dropped while queued, and its row stops at the next token while generating.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from guardrail.errors import AudioInputError, RequestError
from guardrail.obs.streaming import TokenQueue
from guardrail.requests import Request
from guardrail.results import GuardResult
from guardrail.serve.config import ServeLimits
from guardrail.serve.convert import GenParams
from guardrail.serve.deployments import Deployment
from guardrail.serve.errors import ApiError, Cancelled
from guardrail.serve.metrics import ServeMetrics

__all__ = ["Job", "Worker"]

Outcome = GuardResult | BaseException


@dataclass(eq=False)
class Job:
    """One accepted request. Non-streaming: `future` gets the result. Streaming: `events` gets ("start",
    None), then ("chunk", text)..., then ("done", result), or ("error", exception) at any point."""

    deployment: Deployment
    request: dict[str, Any]
    params: GenParams
    stream: bool = False
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: asyncio.Future[GuardResult] | None = None
    events: asyncio.Queue[tuple[str, Any]] | None = None


class Worker:
    """The queue, the dispatcher coroutine that coalesces it, and the one generation thread."""

    def __init__(self, limits: ServeLimits, metrics: ServeMetrics):
        self.limits, self.metrics = limits, metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guardrail-worker")
        self.queue: asyncio.Queue[Job] | None = None
        self.batches = 0  # generate_batch calls
        self.largest_batch = 0
        self._busy = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.limits.queue_size)
        self._task = asyncio.create_task(self._dispatch(), name="guardrail-dispatch")

    def submit(self, job: Job) -> None:
        """Queue a job; a full queue is 429 (with Retry-After)."""
        if self.queue is None:
            raise ApiError(503, "the server is not running yet; retry shortly", code="not_ready")
        loop = asyncio.get_running_loop()
        if job.stream:
            job.events = asyncio.Queue()
        else:
            job.future = loop.create_future()
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise ApiError(
                429,
                f"the server is busy ({self.limits.queue_size} requests queued); retry after a second",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None
        self.metrics.queue_depth.set(self.queue.qsize())

    def run_in_thread(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run `fn` on the generation thread (warm-up)."""
        return asyncio.get_running_loop().run_in_executor(self.executor, fn)

    @property
    def running(self) -> bool:
        """Whether the dispatcher that feeds the generation thread is alive."""
        return self._task is not None and not self._task.done()

    @property
    def idle(self) -> bool:
        return not self._busy and (self.queue is None or self.queue.empty())

    async def stop(self) -> None:
        """Finish every accepted job, then stop the dispatcher and the thread."""
        while not self.idle:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    # -- dispatcher (event loop) ---------------------------------------------------------
    async def _dispatch(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            self._busy = True
            try:
                batch = await self._collect(batch[0])
                self.metrics.queue_depth.set(self.queue.qsize())
                for waiting in batch:
                    self.metrics.queue_wait.observe(time.perf_counter() - waiting.enqueued)
                for each, outcome in await loop.run_in_executor(self.executor, self._run_batch, batch, loop):
                    _settle(each, outcome)
            except Exception as exc:  # a bug here must not stop the dispatcher: fail the jobs, keep serving
                for each in batch:
                    _settle(each, exc)
            finally:
                self._busy = False

    async def _collect(self, first: Job) -> list[Job]:
        """`first` and the jobs that arrive within max_wait_ms, up to max_batch."""
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        batch, deadline = [first], loop.time() + self.limits.max_wait_ms / 1e3
        while len(batch) < self.limits.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            batch.append(job)
        return batch

    # -- generation thread ---------------------------------------------------------------
    def _run_batch(self, batch: list[Job], loop: asyncio.AbstractEventLoop) -> list[tuple[Job, Outcome]]:
        outcomes: list[tuple[Job, Outcome]] = [(j, Cancelled()) for j in batch if j.cancelled.is_set()]
        groups: dict[tuple[str, GenParams], list[Job]] = {}
        for job in batch:
            if not job.cancelled.is_set():
                groups.setdefault((job.deployment.id, job.params), []).append(job)
        for (_, params), jobs in groups.items():
            limit = jobs[0].deployment.policy.limits.max_batch
            for start in range(0, len(jobs), limit):
                outcomes += self._generate(jobs[start : start + limit], params, loop)
        return outcomes

    def _generate(
        self, jobs: list[Job], params: GenParams, loop: asyncio.AbstractEventLoop
    ) -> list[tuple[Job, Outcome]]:
        guard = jobs[0].deployment.guard
        parsed: list[tuple[Job, Request]] = []
        failed: list[tuple[Job, Outcome]] = []
        for job in jobs:  # bad input (a clip that does not decode, text over the limit) fails its request alone
            try:
                parsed.append((job, guard.parse_requests([job.request])[0]))
            except (RequestError, AudioInputError) as exc:
                failed.append((job, exc))
        return failed + self._run_parsed(parsed, params, loop) if parsed else failed

    def _run_parsed(
        self, parsed: list[tuple[Job, Request]], params: GenParams, loop: asyncio.AbstractEventLoop
    ) -> list[tuple[Job, Outcome]]:
        """One generate_batch over parsed requests; one that fails on a request's input is rerun a request at a
        time, so only that request gets the error."""
        ok = [job for job, _ in parsed]
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(ok))
        self.metrics.batch_size.observe(len(ok))
        try:
            results = ok[0].deployment.guard.generate_batch(
                [request for _, request in parsed],
                streamers=[_streamer(job, request, loop) if job.stream else None for job, request in parsed],
                cancel=[job.cancelled for job in ok],
                **params.kwargs(),
            )
        except Exception as exc:
            if len(ok) > 1 and isinstance(exc, (RequestError, AudioInputError)):  # say, one prompt over the context
                return [outcome for pair in parsed for outcome in self._run_parsed([pair], params, loop)]
            return [(job, exc) for job in ok]
        for result in results:
            self.metrics.generated(result)
        return list(zip(ok, results))


def _streamer(job: Job, request: Request, loop: asyncio.AbstractEventLoop) -> TokenQueue:
    """A stream job's text streamer: "start" once generation begins (its input passed every check), then its
    text pieces as "chunk" events, posted from the worker thread to the event loop."""
    events = job.events
    assert events is not None

    def post(kind: str, value: Any = None) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

    return job.deployment.guard.streamer(
        request, list(job.params.stop) or None, sink=lambda text: post("chunk", text), on_open=lambda: post("start")
    )


def _settle(job: Job, outcome: Outcome) -> None:
    """Hand a job its outcome (in the event loop's thread)."""
    if job.stream and job.events is not None:
        job.events.put_nowait(("error", outcome) if isinstance(outcome, BaseException) else ("done", outcome))
    elif job.future is not None and not job.future.done():
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)
