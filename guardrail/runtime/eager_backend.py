"""Steering through the context-variable hooks of `runtime.eager`: each thread (and asyncio task)
sees only the steering it set itself, so guarded calls run side by side on one model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from guardrail.gate.decide import Gate, GateVerdict
from guardrail.runtime.access import access_for
from guardrail.runtime.backend import SteeredCall, SteeringBackend, SteeringPlan, batch_size
from guardrail.runtime.eager import HookState, PrefillGate, StopForward, hooks_for
from guardrail.steering.activations import forward_last


@dataclass
class PrefillRecord:
    """What the gate found in prefill: a verdict taken on the host, or the probe's scores still on
    the device (read only once generation is over, so that decoding never waits for the host)."""

    verdict: GateVerdict | None = None
    device_scores: torch.Tensor | None = None

    def final(self, gate: Gate, batch: int) -> GateVerdict:
        """The gate's verdict once the pass is over."""
        if self.device_scores is not None:
            return gate.decide_scores(self.device_scores.float().cpu().numpy(), batch)
        if self.verdict is None:
            return gate.failure(batch, RuntimeError("the probe's layers never ran"))
        return self.verdict


class EagerBackend(SteeringBackend):
    """Forward hooks on every decoder layer, driven per thread by a context variable. Calls hold the
    model's `ModelAccess` shared: they run side by side, but never during a static request on the same
    model, whose buffer hooks would steer them too (`runtime.access`)."""

    def __init__(self, model: nn.Module, layers: nn.ModuleList, plan: SteeringPlan):
        super().__init__(model, layers, plan)
        self.hooks = hooks_for(layers)
        self.access = access_for(layers)

    @contextmanager
    def steer(self, inputs: dict[str, Any], known: GateVerdict | None) -> Iterator[SteeredCall]:
        batch = batch_size(inputs)
        state, record = self._hook_state(known, batch, inputs.get("attention_mask"))
        call = SteeredCall()
        with self.access.shared(), torch.inference_mode(), self.hooks.activate(state) if state else nullcontext():
            yield call
        call.verdict = record.final(self.plan.gate, batch)

    def prepass(self, inputs: dict[str, Any]) -> GateVerdict:
        state, record = self._probe_state(stop=True, mask=inputs.get("attention_mask"))
        with self.access.shared(), torch.inference_mode(), self.hooks.activate(state):
            try:
                forward_last(self.model, inputs)
            except StopForward:
                pass
        return record.final(self.plan.gate, batch_size(inputs))

    def _hook_state(
        self, known: GateVerdict | None, batch: int, mask: torch.Tensor | None
    ) -> tuple[HookState | None, PrefillRecord]:
        """Hook state for a call (None: nothing to hook), and where the gate's verdict is recorded.

        A verdict known beforehand (mode always/off, or a pre-pass) fixes the deltas now;
        otherwise the probe decides inside prefill (PrefillGate)."""
        gate = self.plan.gate
        if known is None and gate.mode == "probe":
            return self._probe_state(stop=False, mask=mask)
        verdict = known or gate.fixed(batch)
        deltas = self.plan.deltas_for(verdict.steer)
        return (HookState(deltas=deltas) if deltas else None), PrefillRecord(verdict=verdict)

    def _probe_state(self, stop: bool, mask: torch.Tensor | None) -> tuple[HookState, PrefillRecord]:
        """Hook state whose gate lets the probe decide inside prefill (and, with `stop`, ends the
        pass there), and the record the verdict is kept in. `mask`: the prompt's attention mask
        (left padding), for a probe that reads the prompt mean."""
        record = PrefillRecord()
        plan = self.plan

        def decide(captured: dict[int, torch.Tensor], pooled: dict[int, torch.Tensor] | None) -> dict:
            if plan.device_probe is not None and not stop:  # on the device: nothing waits for the host
                record.device_scores = plan.device_probe.score(captured, pooled)
                return plan.deltas_for_scores(record.device_scores)
            record.verdict = plan.gate.decide(captured, pooled)
            return {} if stop else plan.deltas_for(record.verdict.steer)

        gate = PrefillGate(tuple(plan.gate.layers), decide, stop=stop, reads_mean=plan.gate.reads_mean, mask=mask)
        return HookState(gate=gate), record
