"""Steering through the device buffers of `runtime.static`, for generation that may run compiled
(a static cache, whose decoding step transformers compiles, or a model whose forward is compiled):
the eager hooks read a context variable, which compiled graphs cannot."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from guardrail.errors import GuardrailError
from guardrail.gate.decide import GateVerdict
from guardrail.gate.linear import LinearProbe
from guardrail.policy.schema import RuntimePolicy
from guardrail.runtime.access import access_for
from guardrail.runtime.backend import SteeredCall, SteeringBackend, SteeringPlan, batch_size
from guardrail.runtime.eager_backend import EagerBackend
from guardrail.runtime.static import SteeringSlot, slot_for


class StaticBackend(SteeringBackend):
    """The model's shared `SteeringSlot`: one guarded call at a time per model (exclusive `ModelAccess`:
    eager calls on the model wait too), the gate zeroed between calls, the probe scored in the buffers at
    prefill. The slot's hooks stay on the model while some `StaticBackend` that installed them lives.
    A plan with nothing to steer or score runs without hooks, still with exclusive access."""

    def __init__(self, model: nn.Module, layers: nn.ModuleList, plan: SteeringPlan, max_batch: int):
        super().__init__(model, layers, plan)
        self.max_batch = max_batch
        self.eager = EagerBackend(model, layers, plan)  # pre-passes run eagerly, before generation
        self.access = access_for(layers)

    @property
    def slot_probe(self) -> LinearProbe | None:
        """The probe the slot's buffers score at prefill: a torch-form probe on last positions only (the
        buffers hold no attention mask, so a probe that reads the prompt mean decides in a pre-pass)."""
        probe = self.plan.device_probe
        return None if probe is None or probe.reads_mean else probe

    def install(self) -> SteeringSlot:
        """The model's slot with hooks on this plan's layers (installed once; compiled code is dropped
        when they change, so set a guard up before compiling)."""
        deltas, probe = self.plan.deltas, self.slot_probe
        if deltas:
            hidden = next(iter(deltas.values())).numel()
        elif probe is not None:
            hidden = probe.hidden
        else:
            raise GuardrailError("static steering needs steering deltas or a device probe; this plan has neither")
        slot = slot_for(self.layers, hidden, self.max_batch, owner=self)
        slot.ensure(sorted(deltas), probe.layers if probe is not None else ())
        return slot

    def prepass(self, inputs: dict[str, Any]) -> GateVerdict:
        return self.eager.prepass(inputs)

    @contextmanager
    def steer(self, inputs: dict[str, Any], known: GateVerdict | None) -> Iterator[SteeredCall]:
        gate, batch = self.plan.gate, batch_size(inputs)
        if known is None and gate.mode == "probe" and self.slot_probe is None:
            known = self.prepass(inputs)  # a probe the buffers cannot score decides in an eager pre-pass
        verdict = known or (None if gate.mode == "probe" else gate.fixed(batch))
        call = SteeredCall()
        if not self.plan.active:  # nothing to add or score: no hooks, but still alone on the model, since
            assert verdict is not None  # compiled graphs specialise on the hooks present (eager calls add some)
            with self.access.exclusive(), torch.inference_mode():
                yield call
            call.verdict = verdict
            return
        slot = self.install()
        threshold = gate.threshold if gate.threshold is not None else 0.5
        with (
            torch.inference_mode(),
            slot.request(
                self.plan.deltas,
                batch,
                steer=None if verdict is None else verdict.steer,
                probe=self.slot_probe,
                threshold=threshold,
                on_error_steer=gate.on_error_steer,
            ),
        ):
            yield call
            scores = slot.decision(batch)[1] if verdict is None else None  # read before the gate is zeroed
        call.verdict = verdict or gate.decide_scores(scores, batch)


def runtime_generate_kwargs(runtime: RuntimePolicy) -> dict[str, Any]:
    """`generate()` arguments for a policy's runtime section (static cache, compiled decoding step)."""
    if runtime.cache != "static":
        return {}
    if not runtime.compile:
        return {"cache_implementation": "static", "disable_compile": True}
    from transformers import CompileConfig

    config = CompileConfig()
    # the policy asked for it: compile on CPU too (transformers declares the field as None)
    config._compile_all_devices = True  # type: ignore[assignment]
    return {"cache_implementation": "static", "compile_config": config}


def runs_compiled(model: nn.Module, kwargs: Mapping[str, Any]) -> bool:
    """Whether `model.generate(**kwargs)` may run compiled code: a static cache (transformers compiles
    the decoding step), a compile_config, or a compiled model."""
    cache = kwargs.get("cache_implementation") or getattr(model.generation_config, "cache_implementation", None)
    return cache == "static" or "compile_config" in kwargs or is_compiled(model)


def is_compiled(model: nn.Module) -> bool:
    """True for a `torch.compile`d module or one whose forward was replaced by a compiled function."""
    forward = getattr(model, "forward", None)
    return (
        type(model).__name__ == "OptimizedModule"
        or hasattr(forward, "_torchdynamo_orig_callable")
        or hasattr(getattr(forward, "__func__", None), "_torchdynamo_orig_callable")
    )
