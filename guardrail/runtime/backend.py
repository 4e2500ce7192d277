"""One interface over the two ways a guard steers generation.

A `SteeringPlan` is what one guard steers with, fixed at set-up: the deltas alpha * v'_l, the gate
that switches them per sample, and the probe's torch form on the model's device. A
`SteeringBackend` turns the plan on around a call on the model, as a context manager over hooks
(as steering-vectors does): `with backend.steer(inputs, known) as call: model.generate(...)`,
after which `call.verdict` is the gate's verdict. Two backends implement it:

- `EagerBackend` (`runtime.eager_backend`): forward hooks that read a context variable, so each
  thread sees only its own steering; the probe decides inside prefill (`PrefillGate`).
- `StaticBackend` (`runtime.static_backend`): hooks that only read device buffers, which a compiled
  graph can contain; one call at a time per model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from guardrail.errors import GuardrailError, PolicyError
from guardrail.gate.decide import Gate, GateVerdict, ScoringProbe
from guardrail.gate.linear import LinearProbe, steer_flags
from guardrail.policy.schema import Policy
from guardrail.steering.activations import forward_last
from guardrail.steering.artifact import SteeringArtifact


@dataclass(frozen=True)
class SteeringPlan:
    """One guard's steering.

    deltas: alpha * v'_l per steered layer, on that layer's device and dtype ({}: nothing is added,
        e.g. gate.mode off or alpha 0; a monitor policy still scores).
    gate: the policy's gate (mode, probe, threshold, on_error).
    device_probe: the probe's torch form on the device of its first layer (None: the probe, if any,
        scores on the host).
    """

    deltas: Mapping[int, torch.Tensor]
    gate: Gate
    device_probe: LinearProbe | None

    @classmethod
    def for_policy(
        cls,
        policy: Policy,
        model: nn.Module,
        layers: nn.ModuleList,
        artifact: SteeringArtifact | None,
        probe: ScoringProbe | str | Path | None,
    ) -> SteeringPlan:
        """Check the policy, artifact and probe against the model, and prepare the deltas once."""
        deltas = _deltas(policy, model, layers, artifact, _steered_layers(policy, layers))
        gate = Gate(policy, probe, can_steer=bool(deltas))
        if gate.probe is not None:
            gate.probe.check_model(model, layers)
        device_probe = None
        if gate.linear is not None:
            device_probe = gate.linear.to(next(layers[gate.linear.layers[0]].parameters()).device)
        return cls(deltas, gate, device_probe)

    @property
    def active(self) -> bool:
        """Whether calls need hooks at all: something to add, or a probe to score on the device."""
        return bool(self.deltas) or self.device_probe is not None

    def deltas_for(self, steer: Sequence[bool]) -> dict[int, torch.Tensor]:
        """Deltas for a batch: shared (hidden,) tensors when all samples steer, masked when some do."""
        if not any(steer):
            return {}
        if all(steer):
            return dict(self.deltas)
        mask = torch.tensor(list(steer), dtype=torch.float32)[:, None]
        return {i: mask.to(d.device, d.dtype) * d for i, d in self.deltas.items()}

    def deltas_for_scores(self, scores: torch.Tensor) -> dict[int, torch.Tensor]:
        """Per-sample deltas from device scores, as `Gate.decide_scores` would decide them (a
        non-finite score anywhere is a failure of the whole batch: gate.on_error applies)."""
        if not self.deltas:
            return {}
        threshold = self.gate.threshold
        assert threshold is not None, "device scores come from a probe, and a probe gate has a threshold"
        steer = steer_flags(scores, threshold, float(self.gate.on_error_steer))
        return {i: steer[:, None].to(d.device, d.dtype) * d for i, d in self.deltas.items()}


def _steered_layers(policy: Policy, layers: nn.ModuleList) -> list[int]:
    chosen = policy.steering.layers
    if chosen == "all":
        return list(range(len(layers)))
    out_of_range = [i for i in chosen if i >= len(layers)]
    if out_of_range:
        raise PolicyError(
            f"policy {policy.name!r} steers layers {out_of_range}, but the model has "
            f"{len(layers)} decoder layers (0..{len(layers) - 1})"
        )
    return sorted(chosen)


def _deltas(
    policy: Policy, model: nn.Module, layers: nn.ModuleList, artifact: SteeringArtifact | None, steered: list[int]
) -> dict[int, torch.Tensor]:
    """alpha * v'_l for each steered layer, on that layer's device and dtype."""
    if policy.gate.mode == "off" or policy.steering.alpha == 0:
        return {}  # nothing to add: the model runs untouched (a monitor policy still scores)
    if artifact is None:
        raise PolicyError(
            f"policy {policy.name!r} steers (gate.mode: {policy.gate.mode}) but no "
            "artifact was given: calibrate one with guardrail.calibrate, or set gate.mode: off"
        )
    artifact.check_model(model, layers)
    steering = policy.steering
    vectors = artifact.steering_vectors(steering.safe_rank, steering.safe_strength)
    deltas = {}
    for index in steered:
        param = next(layers[index].parameters())
        deltas[index] = (steering.alpha * vectors[index]).to(device=param.device, dtype=param.dtype)
    return deltas


@dataclass
class SteeredCall:
    """Yielded by `SteeringBackend.steer`: `verdict` is the gate's verdict once the block has ended."""

    verdict: GateVerdict | None = None


class SteeringBackend(ABC):
    """Turns one guard's steering plan on around calls on its model."""

    def __init__(self, model: nn.Module, layers: nn.ModuleList, plan: SteeringPlan):
        self.model = model
        self.layers = layers
        self.plan = plan

    @abstractmethod
    def steer(self, inputs: dict[str, Any], known: GateVerdict | None) -> AbstractContextManager[SteeredCall]:
        """Steering on (in inference mode) for a call on `inputs` inside the block, gated per sample.

        known: a verdict taken beforehand (a pre-pass); None: the gate decides (fixed by the mode,
        or the probe at prefill). Steering is off again when the block ends, even if it raised."""

    @abstractmethod
    def prepass(self, inputs: dict[str, Any]) -> GateVerdict:
        """Run prefill only up to the probe's layers and return the probe's verdict before generating."""

    def generate(
        self, inputs: dict[str, Any], known: GateVerdict | None, kwargs: Mapping[str, Any]
    ) -> tuple[list[list[int]], GateVerdict]:
        """`model.generate(**inputs, **kwargs)` steered: the new tokens per sample, and the gate's verdict."""
        with self.steer(inputs, known) as call:
            # torch types module attributes as Tensor | Module; generate is transformers' GenerationMixin's
            output = self.model.generate(**inputs, **kwargs)  # type: ignore[operator]
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        if sequences.shape[0] != batch_size(inputs):  # rows are matched to requests by position
            raise GuardrailError(
                f"generate returned {sequences.shape[0]} sequences for {batch_size(inputs)} requests; "
                "a guarded call needs exactly one per request (num_return_sequences=1)"
            )
        assert call.verdict is not None, "a steering block that ended normally has set the verdict"
        return sequences[:, inputs["input_ids"].shape[1] :].tolist(), call.verdict

    def first_token_logits(self, inputs: dict[str, Any], known: GateVerdict | None) -> torch.Tensor:
        """Logits (batch, vocab) of the first answer token, with prefill steered as `generate` steers it."""
        with self.steer(inputs, known):
            return forward_last(self.model, inputs).logits[:, -1]


def batch_size(inputs: dict[str, Any]) -> int:
    return inputs["input_ids"].shape[0]
