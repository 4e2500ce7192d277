"""Steering for compiled generation: hooks that are pure tensor arithmetic on fixed buffers.

The eager hooks (`guardrail.runtime.eager`) look their state up in a context variable, which
``torch.compile`` cannot trace: every layer would break the graph. Here each steered decoder layer
gets a hook that does only

    hidden[:, -1] += scale[:batch] * delta[layer]      (one fused addcmul_)

on buffers that live on the model's device for as long as the hooks are installed. Per request
the guard writes those buffers in place (the per-sample gate ``scale``, the deltas); nothing is
allocated per step, the graph never changes between requests (no recompilation), and a decision
taken at prefill is already on the device when decoding starts.

The probe gate runs inside prefill (sequence length > 1; decoding steps see one token, so the
compiled decoding graph does not contain it): each probe layer adds ``h[:, -1] @ w_l`` to an
accumulator; the last one turns the sum into a score and sets ``scale`` per sample: steer when
``score >= threshold``, or ``on_error`` when any score is not finite (as the host gate does).
Layers before the probe's see ``scale = 0`` during prefill, as in the eager gate.

Between requests ``scale`` is zero, so the hooks add exact zeros: outputs are bit-identical to
the unhooked model's. Buffers are shared per model and the hooks cannot tell whose forward pass they
are in, so a static request holds the model's `ModelAccess` exclusively (`runtime.access`): eager
guarded calls on the same model wait for it (and it for them), as does any change to the slot (wider
hooks, larger batch buffers: grown in place, re-using the installed hooks). A plain ``model.generate``
run by the user *during* a static request would see that request's steering (the price of having the
state in the compiled graph rather than per thread).

The slot lives as long as some guard uses it: each `StaticBackend` attaches itself (`slot_for`), and
when the last one is garbage-collected the hooks are removed and the slot forgotten.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from guardrail.errors import GuardrailError
from guardrail.gate.linear import LinearProbe, steer_flags
from guardrail.runtime.access import ModelAccess, access_for

log = logging.getLogger("guardrail")


class SteeringSlot:
    """Device buffers and the hooks that read them, for one model's decoder layers."""

    def __init__(
        self, layers: Iterable[nn.Module], hidden: int, max_batch: int, access: ModelAccess | None = None
    ) -> None:
        self.layers = list(layers)
        param = next(self.layers[0].parameters())
        devices = {next(layer.parameters()).device for layer in self.layers}
        if len(devices) > 1:
            raise GuardrailError(
                f"static steering needs the decoder layers on one device, found "
                f"{sorted(map(str, devices))}; use runtime.cache: dynamic for a split model"
            )
        self.device, self.dtype = param.device, param.dtype
        self.hidden = hidden
        self.access = access or ModelAccess()
        self.owners: set[int] = set()  # ids of the backends using the slot (see slot_for)
        # gate and deltas (model dtype): written per request, read by every steered layer
        self.delta = {i: self._buffer(hidden, dtype=self.dtype) for i in range(len(self.layers))}
        self._allocate(max_batch)
        # probe (float32): weights per probe layer, control flags
        self.armed = self._buffer()  # 1: the next prefill decides the gate
        self.bias = self._buffer()
        self.threshold = self._buffer()
        self.on_error = self._buffer()  # 1: steer when the probe's scores are not finite
        self.can_steer = self._buffer()
        self.probe_weight: dict[int, torch.Tensor] = {}
        self._steered: set[int] = set()
        self._probe_layers: tuple[int, ...] = ()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _buffer(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A zero tensor of `shape` (no sizes: a scalar) on the layers' device, at a fixed address."""
        with torch.inference_mode(False):  # normal tensors: writable inside and outside inference mode
            t = torch.zeros(shape, dtype=dtype, device=self.device)
        if hasattr(torch, "_dynamo"):
            torch._dynamo.mark_static_address(t)  # fixed address: CUDA graphs read it in place
        return t

    def _allocate(self, max_batch: int) -> None:
        """The per-sample buffers: gate (model dtype), probe accumulator and scores (float32)."""
        self.max_batch = max_batch
        self.scale = self._buffer(max_batch, 1, dtype=self.dtype)
        self.acc = self._buffer(max_batch)
        self.score = self._buffer(max_batch)

    # -- installation ----------------------------------------------------------------
    def ensure(self, steered: Iterable[int], probe_layers: Sequence[int] = ()) -> None:
        """Hooks on at least these layers (installed once; widening re-installs once no request runs,
        and a compiled graph then recompiles once)."""
        wanted, probes = set(steered), tuple(probe_layers)
        if self._covers(wanted, probes):
            return
        with self.access.exclusive():  # never change the hooks under a running request
            wanted, probes = wanted | self._steered, probes or self._probe_layers
            if self._covers(wanted, probes):
                return
            self.remove()
            self._steered, self._probe_layers = wanted, probes
            for layer in probes:
                self.probe_weight.setdefault(layer, self._buffer(self.delta[layer].numel()))
            hooked = sorted(wanted | set(probes))
            self._handles = [self.layers[i].register_forward_hook(self._hook(i)) for i in hooked]
            _drop_compiled_code()

    def _covers(self, steered: set[int], probes: tuple[int, ...]) -> bool:
        """Whether the installed hooks already serve these layers (a different probe cannot share them)."""
        if probes and self._probe_layers and probes != self._probe_layers:
            raise GuardrailError(
                f"this model's static steering already reads probe layers {self._probe_layers}; "
                f"a probe on layers {probes} cannot share it"
            )
        return bool(self._handles) and steered <= self._steered and (not probes or probes == self._probe_layers)

    def reserve(self, max_batch: int) -> None:
        """Buffers for batches of up to `max_batch`: grown in place once no request runs (the installed
        hooks read the new buffers; a compiled graph recompiles once)."""
        if max_batch <= self.max_batch:
            return
        with self.access.exclusive():
            if max_batch > self.max_batch:
                self._allocate(max_batch)
                _drop_compiled_code()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    @property
    def steered_layers(self) -> frozenset[int]:
        """The layers whose hooks add the delta buffers."""
        return frozenset(self._steered)

    @property
    def probe_layers(self) -> tuple[int, ...]:
        """The layers the device probe reads at prefill (in the probe's order)."""
        return self._probe_layers

    def _hook(self, index: int) -> Callable[..., Any]:
        steers = index in self._steered
        reads = index in self._probe_layers
        last_read = bool(self._probe_layers) and index == self._probe_layers[-1]

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            batch = hidden.shape[0]
            if batch > self.max_batch:  # not a static request (they fit the buffers): an eager call's pass
                return output
            if reads and hidden.shape[1] > 1:  # prefill only: decoding graphs never contain the probe
                self._read_probe(index, hidden[:, -1], batch, last_read)
            if steers:
                hidden[:, -1].addcmul_(self.scale[:batch], self.delta[index])  # fused, no temporary
            return output

        return hook

    def _read_probe(self, index: int, last: torch.Tensor, batch: int, finish: bool) -> None:
        acc = self.acc[:batch]
        acc += last.float() @ self.probe_weight[index]
        if not finish:
            return
        score = torch.sigmoid(acc + self.bias)
        steer = steer_flags(score, self.threshold, self.on_error) * self.can_steer
        armed = self.armed > 0
        self.scale[:batch] = torch.where(armed, steer[:, None].to(self.dtype), self.scale[:batch])
        self.score[:batch] = torch.where(armed, score, self.score[:batch])
        acc.zero_()
        self.armed.zero_()

    # -- per request -----------------------------------------------------------------
    @contextmanager
    def request(
        self,
        deltas: Mapping[int, torch.Tensor],
        batch: int,
        *,
        steer: Sequence[bool] | None = None,
        probe: LinearProbe | None = None,
        threshold: float = 0.5,
        on_error_steer: bool = True,
    ) -> Iterator[SteeringSlot]:
        """Load one request's deltas and gate; zero the gate afterwards (the model is then untouched).

        ``steer``: a decision known beforehand (per sample); otherwise ``probe`` decides at prefill.
        """
        if batch > self.max_batch:
            raise GuardrailError(
                f"batch of {batch} exceeds the static steering buffers ({self.max_batch}); "
                "raise limits.max_batch in the policy"
            )
        with self.access.exclusive():
            try:
                self._load(deltas, batch, steer, probe, threshold, on_error_steer)
                yield self
            finally:
                self.scale.zero_()
                self.armed.zero_()
                self.acc.zero_()

    def _load(
        self,
        deltas: Mapping[int, torch.Tensor],
        batch: int,
        steer: Sequence[bool] | None,
        probe: LinearProbe | None,
        threshold: float,
        on_error_steer: bool,
    ) -> None:
        for i in self._steered:
            if i in deltas:
                self.delta[i].copy_(deltas[i].reshape(-1), non_blocking=True)
            else:
                self.delta[i].zero_()
        self.scale.zero_()
        self.acc.zero_()  # an eager pass that failed between probe layers may have left a partial sum
        self.score.fill_(float("nan"))
        self.can_steer.fill_(1.0 if deltas else 0.0)
        if steer is not None:
            flags = torch.tensor([float(s) for s in steer], dtype=self.dtype)[:, None]
            self.scale[:batch].copy_(flags, non_blocking=True)
            return
        if probe is None:
            raise GuardrailError("a request needs either a known decision or a probe")
        for position, layer in enumerate(probe.layers):
            self.probe_weight[layer].copy_(probe.layer_weight(position), non_blocking=True)
        self.bias.fill_(probe.bias)
        self.threshold.fill_(threshold)
        self.on_error.fill_(1.0 if on_error_steer else 0.0)
        self.armed.fill_(1.0)

    def decision(self, batch: int) -> tuple[list[bool], list[float]]:
        """The gate and scores of the request just run (reads the device: call after generating)."""
        return (self.scale[:batch, 0] > 0).tolist(), self.score[:batch].tolist()


def _drop_compiled_code() -> None:
    """Make the next compilation see the hooks just installed.

    torch.compile does not guard on module hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``
    is True by default): a decoding step compiled before the hooks existed would keep running
    without them, and steering would silently stop after the first token. Compiled code is
    therefore dropped when the hooks change (once per guard set-up, not per request); other
    compiled models in the process recompile on their next call."""
    from torch._dynamo.utils import counters

    if counters["stats"].get("unique_graphs", 0):
        log.warning(
            "guardrail: steering hooks changed after torch.compile ran in this process; resetting "
            "torch.compile caches so that compiled graphs include them (set up guards before compiling "
            "to avoid the recompilation)"
        )
        torch._dynamo.reset()


_SLOTS: weakref.WeakKeyDictionary[nn.Module, SteeringSlot] = weakref.WeakKeyDictionary()
_SLOTS_LOCK = threading.RLock()  # re-entrant: a guard's finalizer may run inside slot_for (garbage collection)


def slot_for(layers: nn.ModuleList, hidden: int, max_batch: int, owner: object) -> SteeringSlot:
    """The shared slot of a decoder-layer list (created on first use), with buffers for `max_batch`
    (grown in place, once no request runs), used by `owner`: when the last owner is garbage-collected the
    slot's hooks are removed and the slot forgotten."""
    with _SLOTS_LOCK:
        slot = _SLOTS.get(layers)
        if slot is None:
            slot = SteeringSlot(layers, hidden, max_batch, access_for(layers))
        if id(owner) not in slot.owners:
            slot.owners.add(id(owner))
            weakref.finalize(owner, _detach, layers, slot, id(owner)).atexit = False
        _SLOTS[layers] = slot  # again: a finalizer run during this call may have dropped it
    slot.reserve(max_batch)  # outside the registry lock: this may wait for a running request
    return slot


def _detach(layers: nn.ModuleList, slot: SteeringSlot, owner: int) -> None:
    """An owner of `slot` is gone; the last one takes the hooks with it. No request can be running on the
    slot then (a request's backend is alive while it runs), so this needs no model access."""
    with _SLOTS_LOCK:
        slot.owners.discard(owner)
        if slot.owners:
            return
        if _SLOTS.get(layers) is slot:
            del _SLOTS[layers]
    slot.remove()


def slot_of(layers: nn.ModuleList) -> SteeringSlot | None:
    """The shared slot of a decoder-layer list, or None when no guard has set one up."""
    with _SLOTS_LOCK:
        return _SLOTS.get(layers)


def release_slot(layers: nn.ModuleList) -> None:
    """Remove the slot's hooks from these layers and forget it: the model is as if no static guard
    had touched it (guards still using it set up a new slot on their next call)."""
    with _SLOTS_LOCK:
        slot = _SLOTS.pop(layers, None)
    if slot is not None:
        with slot.access.exclusive():
            slot.remove()
