"""The gate probe at inference: an ONNX linear probe on the prompt's hidden states.

A probe directory holds `probe.onnx` (input `features` float32 [batch, n_features], output
`score` float32 [batch] = probability harmful; standardisation folded into the weights) and
`probe.json` (layers, pools, hidden size, model identity, threshold, per-layer CV AUC,
training-set hash, ...). Features are, for each pool in `pools` ("last": the last prompt
position; "mean": the mean over the prompt's positions) and each layer in `layers`, that
layer's hidden state, concatenated pool-major. Training lives in `guardrail.gate.train` (v1),
`guardrail.gate.stacked` (v2) and `guardrail.gate.train_on_model` (`fit_probe`), which import this
module, never the reverse. Metrics are plain numpy (`guardrail.gate.metrics`);
`evaluate_probe` reports them for a probe.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from guardrail.errors import ProbeError, ProbeMismatchError
from guardrail.gate.metrics import Array, label_mask, recall_at_fpr, roc_auc
from guardrail.gate.probe_record import (
    MAX_METADATA_BYTES,
    MAX_ONNX_BYTES,
    METADATA_FILE,
    ONNX_FILE,
    READS,
    ProbeMetadata,
    probe_pools,
)
from guardrail.models.adapter import resolve_adapter
from guardrail.models.identity import check_identity, config_summary, read_record, read_versioned_record

__all__ = [
    "OnnxProbe",
    "ProbeMetadata",
    "check_probe_model",
    "evaluate_probe",
    "features_from_activations",
    "read_metadata",
    "select_providers",
]


# -- features and metrics ------------------------------------------------------------------
def features_from_activations(
    activations: Array | Mapping[int, Array],
    layers: Sequence[int],
    pooled: Array | Mapping[int, Array] | None = None,
    pools: Sequence[str] = ("last",),
) -> Array:
    """Feature matrix (batch, len(pools) * len(layers) * hidden): per pool, the probe's layers in order.

    `activations` (last position) and `pooled` (prompt mean, needed when "mean" is in `pools`) are
    (num_layers, batch, hidden) as `prompt_activations` returns, or mappings layer -> (batch,
    hidden) as a capture hook collects. Tensor in, tensor out.

    >>> features_from_activations(torch.zeros(4, 2, 8), [1, 3]).shape
    torch.Size([2, 16])
    """
    if not layers:
        raise ProbeMismatchError("no probe layers given: a probe reads at least one layer")
    sources = {"last": activations, "mean": pooled}
    parts = []
    for pool in pools:
        source = sources.get(pool)
        if source is None:
            raise ProbeMismatchError(
                f"the probe reads pool {pool!r} but no such activations were given; "
                "capture the prompt mean (prompt_activations(..., pooled=True))"
            )
        parts += _layer_parts(source, layers)
    if isinstance(parts[0], torch.Tensor):
        tensors = [torch.as_tensor(part) for part in parts]  # one source: all tensors when the first is
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=-1)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


def _layer_parts(activations: Array | Mapping[int, Array], layers: Sequence[int]) -> list[Any]:
    if isinstance(activations, Mapping):
        missing = [layer for layer in layers if layer not in activations]
        if missing:
            raise ProbeMismatchError(
                f"the probe reads layers {list(layers)} but no activations were given for "
                f"{missing}; capture those layers"
            )
        return [activations[layer] for layer in layers]
    if activations.ndim != 3 or max(layers) >= activations.shape[0]:
        raise ProbeMismatchError(
            f"activations of shape {tuple(activations.shape)} lack the probe's layers "
            f"{list(layers)}; expected (num_layers, batch, hidden)"
        )
    return [activations[layer] for layer in layers]


class ScoresFeatures(Protocol):
    layers: list[int]
    threshold: float

    def score(self, features: Array) -> np.ndarray: ...


def evaluate_probe(
    probe: ScoresFeatures, activations: Array, labels: Array, pooled: Array | None = None
) -> dict[str, Any]:
    """Held-out metrics of a probe (TrainedProbe or OnnxProbe) on (layers, n, hidden) activations
    (and their prompt means, for a probe that reads them).

    >>> evaluate_probe(probe, eval_acts, eval_labels)["roc_auc"]  # doctest: +SKIP
    0.91
    """
    features = features_from_activations(activations, probe.layers, pooled, probe_pools(probe))
    scores, y = probe.score(features), label_mask(labels)
    return {
        "n_harmful": int(y.sum()),
        "n_safe": int((~y).sum()),
        "roc_auc": roc_auc(scores, y),
        "recall_at_1pct_fpr": recall_at_fpr(scores, y, 0.01),
        "recall_at_5pct_fpr": recall_at_fpr(scores, y, 0.05),
        "threshold": probe.threshold,
        "fpr_at_threshold": float(np.mean(scores[~y] >= probe.threshold)),
        "recall_at_threshold": float(np.mean(scores[y] >= probe.threshold)),
    }


# -- model identity ------------------------------------------------------------------------
def check_probe_model(
    meta: ProbeMetadata, model: nn.Module, layers: nn.ModuleList | None = None, what: str = "probe"
) -> None:
    """Raise ProbeMismatchError unless a probe with metadata `meta` was trained on `model`: the
    layers it reads exist, the hidden size matches, and so does the model's identity."""
    if layers is None:
        layers = resolve_adapter(model).decoder_layers(model)
    redo = "train a probe on this model (guardrail.gate.train_on_model.fit_probe) or load the probe made for it"
    if max(meta.layers) >= len(layers):
        raise ProbeMismatchError(
            f"{what} reads layers {meta.layers} but the model has {len(layers)} decoder layers; {redo}"
        )
    hidden = config_summary(model, layers).get("hidden_size")
    if hidden not in (None, meta.hidden_size):
        raise ProbeMismatchError(f"{what} expects hidden size {meta.hidden_size} but the model's is {hidden}; {redo}")
    check_identity(meta.model, model, layers, what=what, made="trained", remedy=redo, error=ProbeMismatchError)


# -- inference -----------------------------------------------------------------------------
def select_providers() -> list[str]:
    """CUDA (then CPU) only where torch sees a GPU and onnxruntime has the CUDA provider, else CPU.

    onnxruntime-gpu lists CUDAExecutionProvider even without a GPU and logs an error when it is
    requested there, so both conditions are needed.

    >>> select_providers()[-1]
    'CPUExecutionProvider'
    """
    import onnxruntime as ort

    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxProbe:
    """A saved probe, run with onnxruntime. Decision: score >= threshold means harmful (steer).

    >>> probe = OnnxProbe.load("artifacts/qwen05b/probe")  # doctest: +SKIP
    >>> probe.check_model(model)  # doctest: +SKIP
    >>> probe.decide(features_from_activations(acts, probe.layers))  # doctest: +SKIP
    array([ True, False])
    """

    def __init__(self, metadata: ProbeMetadata, session: Any, path: Path, onnx_bytes: bytes | None = None) -> None:
        self.metadata, self.path, self._session = metadata, path, session
        self.onnx_bytes = onnx_bytes  # the verified graph (read back into torch by guardrail.gate.linear)
        self._outputs, self._input, self._width = [metadata.onnx.output], metadata.onnx.input, metadata.n_features

    layers = property(lambda self: list(self.metadata.layers))
    pools = property(lambda self: list(self.metadata.pools))
    thresholds = property(lambda self: self.metadata.thresholds)
    threshold = property(lambda self: self.metadata.threshold)
    n_features = property(lambda self: self.metadata.n_features)
    providers = property(lambda self: list(self._session.get_providers()))
    session = property(lambda self: self._session, doc="the onnxruntime InferenceSession (for benchmarks)")

    @classmethod
    def load(cls, path: str | Path, providers: Sequence[str] | None = None, *, threads: int = 1) -> OnnxProbe:
        """Read a probe directory written by `TrainedProbe.save`; verify its hash and shapes.

        `providers` defaults to `select_providers()`; `threads` is onnxruntime's intra-op
        thread count (1 is fastest for a single dot product per sample).
        """
        path = Path(path)
        meta = read_metadata(path)
        blob = read_record(path / meta.onnx.file, MAX_ONNX_BYTES, ProbeError, _redo(path))
        if hashlib.sha256(blob).hexdigest() != meta.onnx.sha256:
            raise ProbeError(
                f"{path / meta.onnx.file} does not match the sha256 recorded in {path / METADATA_FILE} "
                "(edited, truncated or replaced); retrain the probe or restore both files together"
            )
        session = _session(blob, path / meta.onnx.file, list(providers or select_providers()), threads)
        _check_io(session, meta, path / meta.onnx.file)
        return cls(meta, session, path, blob)

    def score(self, features: Array) -> np.ndarray:
        """Probability harmful per sample, float32 (batch,), from (batch, n_features) features."""
        x = _as_float32(features)
        if x.ndim != 2 or x.shape[1] != self._width:
            raise ProbeMismatchError(
                f"probe {self.path} reads (batch, {self.n_features}) features (pools "
                f"{self.pools} x layers {self.layers} x hidden {self.metadata.hidden_size}); got {x.shape}"
            )
        scores = self._session.run(self._outputs, {self._input: x})[0]
        if not math.isfinite(scores.sum()):  # NaN/inf anywhere (one reduction: cheaper than isfinite().all())
            bad = np.flatnonzero(~np.isfinite(scores)).tolist()
            raise ProbeError(
                f"probe {self.path} gave non-finite scores for samples {bad}: their activations "
                "contain NaN/inf (check the model's dtype and inputs)"
            )
        return scores

    def decide(self, features: Array, threshold: float | None = None) -> np.ndarray:
        """Boolean gate per sample: score >= threshold (default: the probe's calibrated one)."""
        return self.score(features) >= (self.threshold if threshold is None else threshold)

    def check_model(self, model: nn.Module, layers: nn.ModuleList | None = None) -> None:
        """Raise ProbeMismatchError unless this probe was trained on `model` (layers: its decoder layers)."""
        check_probe_model(self.metadata, model, layers, what=f"probe {self.path}")


def read_metadata(path: Path) -> ProbeMetadata:
    """Parse `path/probe.json`, raising ProbeError that names the file and the fix."""
    return read_versioned_record(
        path / METADATA_FILE,
        ProbeMetadata,
        reads=READS,
        limit=MAX_METADATA_BYTES,
        error=ProbeError,
        fix=_redo(path),
        redo="retrain and save the probe",
    )


def _redo(path: Path) -> str:
    return (
        f"{path} must be a probe directory ({METADATA_FILE} + {ONNX_FILE}) written by TrainedProbe.save "
        "(see fit_probe); retrain and save the probe again"
    )


def _session(blob: bytes, file: Path, providers: list[str], threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: a CPU-only run prints nothing
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(blob, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ProbeError(
            f"onnxruntime cannot load {file} ({str(exc).splitlines()[0][:200]}); retrain and save the probe again"
        ) from None


def _check_io(session: Any, meta: ProbeMetadata, file: Path) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    ok = (
        len(inputs) == 1
        and inputs[0].name == meta.onnx.input
        and inputs[0].shape[-1] == meta.n_features
        and [o.name for o in outputs] == [meta.onnx.output]
    )
    if not ok:
        raise ProbeError(
            f"{file} has inputs {[(i.name, i.shape) for i in inputs]} and outputs "
            f"{[o.name for o in outputs]}, not ({meta.onnx.input!r}, [batch, {meta.n_features}]) -> "
            f"{meta.onnx.output!r} as {METADATA_FILE} says; retrain the probe"
        )


def _as_float32(features: Array) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        return features.detach().to("cpu", torch.float32).contiguous().numpy()
    return np.ascontiguousarray(features, dtype=np.float32)
