"""The per-request gate: should this request be steered (or blocked)?

A probe reads the model's own last-prompt-token activations during prefill. Its decision is held
for the whole generation, per sample. When the probe fails (an exception, non-finite scores), the
policy's `gate.on_error` decides: "steer" (fail closed) or "pass" (fail open); the decision record
always says so, a failure is never a silent pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from guardrail.errors import GuardrailError, PolicyError
from guardrail.gate.linear import linear_form
from guardrail.gate.probe_record import probe_pools
from guardrail.policy.schema import AtFpr, Policy


class ScoringProbe(Protocol):
    """What the gate needs of a probe. A probe may also carry `pools` (default ["last"]; probe v2:
    ["last", "mean"], the prompt's mean activations as a second block of features)."""

    layers: list[int]
    threshold: float

    def score(self, features: Any) -> np.ndarray: ...

    def check_model(self, model: torch.nn.Module, layers: torch.nn.ModuleList | None = None) -> None: ...


@dataclass
class GateVerdict:
    """The gate's verdict on a batch, per sample: steer?, block?, the probe score (None when no
    probe ran) and why. (`guardrail.results.Decision` is the per-request record users get.)"""

    steer: list[bool]
    block: list[bool]
    scores: list[float | None]
    reasons: list[str]

    def subset(self, keep: Sequence[int]) -> GateVerdict:
        """The verdict for the samples at `keep`, in that order."""
        return GateVerdict(
            [self.steer[i] for i in keep],
            [self.block[i] for i in keep],
            [self.scores[i] for i in keep],
            [self.reasons[i] for i in keep],
        )


class Gate:
    """Decides steering per sample according to the policy's gate section."""

    def __init__(self, policy: Policy, probe: ScoringProbe | str | Path | None, can_steer: bool):
        self.policy = policy
        self.mode = policy.gate.mode
        self.can_steer = can_steer
        self.probe = _load(probe) if self.mode == "probe" or probe is not None else None
        if self.mode == "probe" and self.probe is None:
            raise PolicyError(
                f"policy {policy.name!r} has gate.mode: probe but no probe was given; pass "
                "probe=<directory or object> to Guard, or use gate.mode: always"
            )
        self.threshold = self._score(policy.gate.threshold, "gate.threshold")
        if self.threshold is None and self.probe is not None:
            self.threshold = self.probe.threshold
        self.block_above = self._score(policy.actions.block_above, "actions.block_above")
        # the probe as torch arithmetic, scored on the model's device at prefill (None: host only)
        self.linear = linear_form(self.probe) if self.mode == "probe" and self.probe is not None else None

    @property
    def layers(self) -> list[int]:
        return list(self.probe.layers) if self.probe is not None and self.mode == "probe" else []

    @property
    def reads_mean(self) -> bool:
        """Whether the probe also reads the prompt's mean activations (probe v2's second pool)."""
        return "mean" in self.pools

    @property
    def pools(self) -> list[str]:
        return list(probe_pools(self.probe)) if self.layers else []

    @property
    def on_error_steer(self) -> bool:
        """gate.on_error: steer (fail closed) when the probe fails, or pass (fail open)."""
        return self.policy.gate.on_error == "steer"

    @property
    def needs_prepass(self) -> bool:
        """Blocking must be known before generating; exact mode steers the probe's own layers too."""
        return self.mode == "probe" and (self.policy.gate.exact or self.block_above is not None)

    def fixed(self, batch: int) -> GateVerdict:
        """The verdict when no probe is consulted (mode always or off)."""
        steer = self.mode == "always" and self.can_steer
        reason = (
            "gate.mode=always: steering every request"
            if steer
            else "gate.mode=off: steering disabled by policy"
            if self.mode == "off"
            else "policy steers with alpha 0 or no layers"
        )
        return GateVerdict([steer] * batch, [False] * batch, [None] * batch, [reason] * batch)

    def decide(
        self, activations: Mapping[int, torch.Tensor], pooled: Mapping[int, torch.Tensor] | None = None
    ) -> GateVerdict:
        """Score captured (batch, hidden) activations of the probe's layers (and their prompt means,
        for a probe that reads them) and decide."""
        from guardrail.gate.onnx_probe import features_from_activations

        probe = self.probe
        assert probe is not None, "only a probe gate reads activations"
        batch = next(iter(activations.values())).shape[0]

        def host(acts: Mapping[int, torch.Tensor] | None) -> dict[int, torch.Tensor] | None:
            return None if acts is None else {k: v.float().cpu() for k, v in acts.items()}

        try:
            features = features_from_activations(host(activations) or {}, probe.layers, host(pooled), self.pools)
            scores = probe.score(features)
        except Exception as exc:  # the policy says what a failure means; never a silent pass
            return self.failure(batch, exc)
        return self.decide_scores(scores, batch)

    def decide_scores(self, scores: Any, batch: int) -> GateVerdict:
        """The verdict for probe scores computed elsewhere (e.g. on the model's device)."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (batch,) or not np.isfinite(scores).all():
            return self.failure(
                batch, GuardrailError(f"probe returned scores of shape {scores.shape} with non-finite values")
            )
        return self._from_scores(scores)

    def _from_scores(self, scores: np.ndarray) -> GateVerdict:
        block_above = self.block_above
        steer, block, reasons = [], [], []
        for score in scores:
            blocked = block_above is not None and score >= block_above
            harmful = score >= self.threshold
            steer.append(bool(harmful and self.can_steer and not blocked))
            block.append(bool(blocked))
            if blocked:
                reasons.append(f"probe score {score:.3f} >= block_above {block_above:g}: blocked")
            elif harmful:
                action = "steering" if self.can_steer else "flagged, not steered (alpha 0 or gate without vectors)"
                reasons.append(f"probe score {score:.3f} >= threshold {self.threshold:.3f}: {action}")
            else:
                reasons.append(f"probe score {score:.3f} < threshold {self.threshold:.3f}: not steered")
        return GateVerdict(steer, block, [float(s) for s in scores], reasons)

    def _score(self, value: float | AtFpr | None, field: str) -> float | None:
        """A policy threshold as a probe score: given as one, or the probe's for a false-positive rate."""
        if not isinstance(value, AtFpr):
            return value
        if self.probe is None:
            return None  # no probe, nothing to score: the field has no effect (mode always / off)
        fpr = value.fpr
        table = getattr(self.probe, "thresholds", None)
        if table is None:
            raise PolicyError(
                f"policy {self.policy.name!r} sets {field}: {{fpr: {fpr:g}}} but this probe has no threshold "
                "table (probes trained before lalm-guardrail 0.2, or custom probes); retrain it with fit_probe, "
                f"or give {field} as a score"
            )
        for rate, threshold in table.at_fpr.items():
            if abs(rate - fpr) <= 1e-9:
                return float(threshold)
        known = ", ".join(f"{rate:g}" for rate in sorted(table.at_fpr))
        raise PolicyError(
            f"policy {self.policy.name!r} sets {field}: {{fpr: {fpr:g}}}; this probe has thresholds at {known}"
        )

    def failure(self, batch: int, exc: Exception) -> GateVerdict:
        closed = self.on_error_steer
        what = f"probe failed ({type(exc).__name__}: {str(exc)[:120]})"
        reason = f"{what}; gate.on_error={self.policy.gate.on_error}: " + ("steering" if closed else "not steered")
        return GateVerdict([closed and self.can_steer] * batch, [False] * batch, [None] * batch, [reason] * batch)


def _load(probe: ScoringProbe | str | Path | None) -> ScoringProbe | None:
    if probe is None or not isinstance(probe, (str, Path)):
        return probe
    from guardrail.gate.onnx_probe import OnnxProbe

    return OnnxProbe.load(probe)
