"""Forward hooks on decoder layers that add steering deltas, and let a gate read prefill.

One `LayerHooks` exists per decoder-layer list. Its hooks are installed while at least
one call is active and removed when the last one ends, even if that call raised. What a
hook does is read from a context variable, so each thread (and each asyncio task) only
ever sees the steering state it set itself: two guards on one model, or one guard used
from two threads, cannot leak steering into each other, and a plain `model.generate`
running beside a guarded call is untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from guardrail.runtime.access import PerModule
from guardrail.steering.activations import masked_mean


@dataclass
class HookState:
    """What the hooks do during one call.

    deltas: layer index -> tensor added at the last position, already on the model's
        device and dtype, shaped (hidden,) or (batch, hidden) when a per-sample gate
        scaled it (prepared once per call: the hook itself allocates nothing).
    gate: a decision taken during the first forward pass (prefill) from the activations of
        some layers; it replaces `deltas` for the rest of the call.
    """

    deltas: dict[int, torch.Tensor] = field(default_factory=dict)
    gate: PrefillGate | None = None


@dataclass
class PrefillGate:
    """Read `layers` at the last prompt position during prefill, then let `decide` set the deltas.

    Layers up to the last one read run unsteered in that pass (their output is what is read);
    later layers, and every layer at each decoding step, get the decided deltas. With
    `stop=True` the forward pass ends once the decision is made (a partial pre-pass).
    """

    layers: tuple[int, ...]
    decide: Callable[[dict[int, torch.Tensor], dict[int, torch.Tensor] | None], dict[int, torch.Tensor]]
    stop: bool = False
    captured: dict[int, torch.Tensor] = field(default_factory=dict)
    done: bool = False
    # probe v2 also reads the prompt's mean: positions where `mask` (batch, seq) is 1 (None: no mean)
    reads_mean: bool = False
    mask: torch.Tensor | None = None
    pooled: dict[int, torch.Tensor] = field(default_factory=dict)


class StopForward(Exception):
    """Raised by a hook to end a pre-pass once the gate has decided."""


class LayerHooks:
    """Reference-counted hook set over one model's decoder layers."""

    def __init__(self, layers: Iterable[nn.Module]) -> None:
        self._layers = list(layers)
        self._state: ContextVar[HookState | None] = ContextVar(f"guardrail_hooks_{id(self)}", default=None)
        self._lock = threading.Lock()
        self._active = 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    @contextmanager
    def activate(self, state: HookState) -> Iterator[HookState]:
        """Make `state` drive the hooks for the current thread/task inside the block."""
        self._acquire()
        token = self._state.set(state)
        try:
            yield state
        finally:
            self._state.reset(token)
            self._release()

    def _acquire(self) -> None:
        with self._lock:
            if self._active == 0:
                self._handles = [
                    layer.register_forward_hook(self._make_hook(i)) for i, layer in enumerate(self._layers)
                ]
            self._active += 1

    def _release(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                for handle in self._handles:
                    handle.remove()
                self._handles = []

    def _make_hook(self, index: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            state = self._state.get()
            if state is None:
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            gate = state.gate
            if gate is not None and not gate.done and index in gate.layers:
                _read_gate(state, gate, index, hidden)
            delta = state.deltas.get(index)
            if delta is None:
                return None
            hidden = _add_last(hidden, delta)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook


def _read_gate(state: HookState, gate: PrefillGate, index: int, hidden: torch.Tensor) -> None:
    gate.captured[index] = hidden[:, -1, :].detach()
    if gate.reads_mean:
        gate.pooled[index] = masked_mean(hidden.detach(), gate.mask)
    if len(gate.captured) == len(gate.layers):
        gate.done = True
        state.deltas = gate.decide(gate.captured, gate.pooled if gate.reads_mean else None)
        if gate.stop:
            raise StopForward


def _add_last(hidden: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Add delta at the last sequence position: the last prompt token during prefill
    (prompts are left-padded) and the newest token at each decoding step."""
    if torch.is_grad_enabled() and hidden.requires_grad:
        hidden = hidden.clone()
    hidden[:, -1, :] += delta
    return hidden


_HOOKS: PerModule[LayerHooks] = PerModule(LayerHooks)


def hooks_for(layers: nn.ModuleList) -> LayerHooks:
    """The shared `LayerHooks` of a decoder-layer list (created on first use)."""
    return _HOOKS.get(layers)
