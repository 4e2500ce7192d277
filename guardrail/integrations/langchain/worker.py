"""Generation in a worker thread, seen from LangChain: a stopping criterion that another thread sets
(a consumer left a stream, an async call was cancelled), and a sync iterator drained into async code."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, TypeVar

import torch
from transformers import StoppingCriteria

__all__ = ["CancelOnEvent", "iterate_in_worker"]

T = TypeVar("T")


class CancelOnEvent(StoppingCriteria):
    """Stops generation once `event` is set (a consumer left a stream, or an async call was cancelled)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


async def iterate_in_worker(make: Callable[[], Iterator[T]], cancel: threading.Event) -> AsyncGenerator[T, None]:
    """The items of `make()`, produced in a worker thread (with this context) and yielded on the event loop,
    so audio decoding and generation never block it; an error there is raised here. Leaving early, or
    any error, sets `cancel`."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()  # items, a _Failure, or _DONE

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def work() -> None:
        try:
            for item in make():
                put(item)
        except BaseException as exc:  # re-raised in the consumer
            put(_Failure(exc))
        finally:
            put(_DONE)

    worker = loop.run_in_executor(None, functools.partial(contextvars.copy_context().run, work))
    try:
        while (item := await queue.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        cancel.set()
    await worker
