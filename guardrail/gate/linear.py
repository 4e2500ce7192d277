"""The probe's logistic form, run on the model's device inside the forward pass.

A probe saved by this package is ``sigmoid(features @ w + b)`` (standardisation and Platt scaling
folded into the Gemm). Read back into torch, it scores activations where they already are: the
gate becomes a device tensor, taken at prefill without copying activations to the host, so the
decoding loop never waits for the host. The ONNX file stays the artifact of record: the torch
form is only used after it reproduces onnxruntime's scores on random inputs.
"""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from guardrail.gate.probe_record import probe_pools

log = logging.getLogger("guardrail")

_TOLERANCE = 1e-4  # probability units; both sides compute one float32 dot product


@dataclass(frozen=True)
class LinearProbe:
    """``score = sigmoid(sum_p sum_l h_{p,l} @ w_{p,l} + b)`` over the probe's pools (last position,
    prompt mean) and layers, in that order."""

    layers: tuple[int, ...]
    weight: torch.Tensor  # (len(pools) * len(layers) * hidden,) float32
    bias: float
    pools: tuple[str, ...] = ("last",)

    @property
    def hidden(self) -> int:
        return self.weight.numel() // (len(self.layers) * len(self.pools))

    @property
    def reads_mean(self) -> bool:
        return "mean" in self.pools

    def layer_weight(self, position: int, pool: str = "last") -> torch.Tensor:
        """The slice of ``weight`` that reads the ``position``-th probe layer of ``pool``."""
        start = (self.pools.index(pool) * len(self.layers) + position) * self.hidden
        return self.weight[start : start + self.hidden]

    def to(self, device: torch.device | str) -> LinearProbe:
        return LinearProbe(self.layers, self.weight.to(device), self.bias, self.pools)

    def score(
        self, activations: Mapping[int, torch.Tensor], pooled: Mapping[int, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """(batch,) float32 scores from last-position activations (batch, hidden) per layer and, for a
        probe that reads them, the prompt means per layer (`pooled`)."""
        sources = {"last": activations, "mean": pooled if pooled is not None else {}}
        terms = [
            sources[pool][layer].float() @ self.layer_weight(i, pool).to(sources[pool][layer].device)
            for pool in self.pools
            for i, layer in enumerate(self.layers)
        ]
        return torch.sigmoid(functools.reduce(operator.add, terms) + self.bias)


def steer_flags(scores: torch.Tensor, threshold: float | torch.Tensor, on_error: float | torch.Tensor) -> torch.Tensor:
    """1.0 per sample to steer, 0.0 not: ``score >= threshold``; when any score is not finite the
    whole batch gets ``on_error`` (1.0 steer, 0.0 pass), as ``Gate.decide_scores`` decides on the host.
    Pure tensor arithmetic: usable inside a compiled graph."""
    return torch.where(torch.isfinite(scores).all(), (scores >= threshold).float(), on_error)


def linear_form(probe: Any) -> LinearProbe | None:
    """The probe as a :class:`LinearProbe`, or None when it is not one this package can read
    (a custom probe object, another ONNX graph) or the torch form disagrees with the probe's
    own scores; the guard then scores on the host."""
    try:
        found = _from_module(probe) or _from_onnx(probe)
    except Exception as exc:  # an unreadable graph is not an error: the host path still works
        log.debug("probe has no linear form: %s", exc)
        return None
    if found is None:
        return None
    return found if _agrees(found, probe) else None


def _from_module(probe: Any) -> LinearProbe | None:
    linear = getattr(getattr(probe, "module", None), "linear", None)
    if not isinstance(linear, torch.nn.Linear) or linear.out_features != 1:
        return None
    bias = float(linear.bias.detach()[0]) if linear.bias is not None else 0.0
    return LinearProbe(tuple(probe.layers), linear.weight.detach().float().reshape(-1).cpu(), bias, probe_pools(probe))


def _from_onnx(probe: Any) -> LinearProbe | None:
    """Gemm -> Sigmoid (-> Squeeze/Reshape/Flatten): the graph ``export_onnx`` writes."""
    blob = getattr(probe, "onnx_bytes", None)
    if blob is None:
        return None
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(blob).graph
    ops = [n.op_type for n in graph.node]
    if ops[:2] != ["Gemm", "Sigmoid"] or any(op not in ("Squeeze", "Reshape", "Flatten") for op in ops[2:]):
        return None
    gemm = graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
    if attrs.get("transA", 0):
        return None
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    w = np.asarray(init[gemm.input[1]], dtype=np.float64) * attrs.get("alpha", 1.0)
    w = w.reshape(-1) if w.shape[0] == 1 or w.ndim == 1 else w.T.reshape(-1)
    b = float(np.asarray(init[gemm.input[2]]).reshape(-1)[0]) * attrs.get("beta", 1.0) if len(gemm.input) > 2 else 0.0
    return LinearProbe(tuple(probe.layers), torch.from_numpy(w.astype(np.float32)), b, probe_pools(probe))


def _agrees(linear: LinearProbe, probe: Any) -> bool:
    """Same scores as the probe itself on random features (logits spread over [-4, 4])."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, linear.weight.numel(), generator=gen)
    x = x * (4.0 / max(float((x @ linear.weight).abs().max()), 1e-6))
    blocks = x.reshape(16, len(linear.pools), len(linear.layers), linear.hidden)
    per_pool = [{layer: blocks[:, p, i] for i, layer in enumerate(linear.layers)} for p in range(len(linear.pools))]
    ours = linear.score(per_pool[0], per_pool[1] if len(per_pool) > 1 else None).numpy()
    theirs = np.asarray(probe.score(x.numpy()), dtype=np.float64)
    ok = theirs.shape == ours.shape and bool(np.abs(ours - theirs).max() <= _TOLERANCE)
    if not ok:
        log.warning("the probe's torch form disagrees with its own scores; scoring on the host instead")
    return ok
