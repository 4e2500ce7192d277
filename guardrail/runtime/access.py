"""Who may run on a model's decoder layers at the same time: shared (eager) or exclusive (static) access.

Eager guarded calls keep their steering in a context variable, so any number of them run side by side.
The static path's steering lives in device buffers that its hooks add on *every* forward pass (a compiled
graph cannot ask "is this call mine?"), so while a static request runs, nothing else may run on those
layers, and its hooks and buffers may only change when no request runs. Hence one `ModelAccess` per
decoder-layer list: eager calls hold it shared, static requests and changes to the static slot hold it
exclusively. A waiting exclusive holder goes first (new shared holders wait), so static requests are not
starved by a stream of eager calls. Plain `model.generate` calls by the user take no part: one that runs
during a static request sees that request's steering (documented in `runtime.static`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from torch import nn

from guardrail.errors import GuardrailError


class ModelAccess:
    """A shared/exclusive lock over one model's decoder layers (shared holding nests within a thread)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._owner: int | None = None  # thread holding exclusive access
        self._waiting = 0  # threads waiting for exclusive access
        self._local = threading.local()  # this thread's shared depth

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Run alongside other shared holders; wait while an exclusive holder runs or waits."""
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            with self._cond:
                self._refuse_nesting("an eager guarded call", exclusive=False)
                while self._owner is not None or self._waiting:
                    self._cond.wait()
                self._shared += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                with self._cond:
                    self._shared -= 1
                    if self._shared == 0:
                        self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Run alone: wait until every other holder has left."""
        with self._cond:
            self._refuse_nesting("a static-cache request or a change to its hooks", exclusive=True)
            self._waiting += 1
            try:
                while self._owner is not None or self._shared:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._owner = threading.get_ident()
        try:
            yield
        finally:
            with self._cond:
                self._owner = None
                self._cond.notify_all()

    def _refuse_nesting(self, what: str, exclusive: bool) -> None:
        """A thread that already holds access and asks for more would wait for itself forever."""
        held_exclusive = self._owner == threading.get_ident()
        held_shared = exclusive and getattr(self._local, "depth", 0) > 0
        if held_exclusive or held_shared:
            raise GuardrailError(
                f"{what} on this model was started from inside another guarded call on it (a streamer, "
                "stopping criterion or callback); it would wait for itself: run it after that call returns"
            )


T = TypeVar("T")


class PerModule(Generic[T]):
    """One shared `T` per decoder-layer list: made by `make(layers)` on first use, dropped with the list."""

    def __init__(self, make: Callable[[Any], T]) -> None:
        self._make = make
        self._items: weakref.WeakKeyDictionary[nn.Module, T] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, layers: nn.Module) -> T:
        with self._lock:
            item = self._items.get(layers)
            if item is None:
                item = self._items[layers] = self._make(layers)
            return item


_ACCESS: PerModule[ModelAccess] = PerModule(lambda layers: ModelAccess())


def access_for(layers: nn.Module) -> ModelAccess:
    """The shared `ModelAccess` of a decoder-layer list (created on first use)."""
    return _ACCESS.get(layers)
