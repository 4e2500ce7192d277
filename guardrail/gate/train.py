"""Training the gate probe: standardised L2 logistic regression on last-prompt-token activations.

Everything is chosen by stratified k-fold cross-validation on the training set: the L2
strength (per feature set), the layer (best pooled out-of-fold ROC AUC; ties go to the
earlier layer, which the gate can read sooner), and the threshold (the target FPR on the
out-of-fold scores of the safe queries: in-sample scores would set it far too low).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from guardrail.errors import ProbeError, RequestError
from guardrail.gate.fit import L2_GRID, cross_validate, final_module, fit_platt, single_thread, stratified_folds
from guardrail.gate.metrics import Array, threshold_at_fpr
from guardrail.gate.onnx_probe import check_probe_model
from guardrail.gate.probe_record import (
    INPUT_NAME,
    METADATA_FILE,
    ONNX_FILE,
    OUTPUT_NAME,
    TABLE_FPRS,
    CrossValidation,
    Normalisation,
    OnnxInfo,
    Pool,
    ProbeMetadata,
    StackInfo,
    Thresholds,
    TrainingSet,
)
from guardrail.models.adapter import resolve_adapter
from guardrail.models.identity import ModelIdentity, identify
from guardrail.version import __version__

OPSET = 18


@dataclass
class TrainedProbe:
    """A trained probe: `module` maps (batch, n_features) float32 features to P(harmful).

    >>> probe = train_probe(acts, labels)  # doctest: +SKIP
    >>> probe.bind(model).save("artifacts/qwen05b/probe")  # doctest: +SKIP
    """

    module: nn.Module
    layers: list[int]
    hidden_size: int
    threshold: float
    target_fpr: float
    layer_auc: dict[int, float]
    normalisation: Normalisation
    training: TrainingSet
    cv: CrossValidation
    identity: ModelIdentity | None = field(default=None)
    pools: list[Pool] = field(default_factory=lambda: ["last"])
    stack: StackInfo | None = None
    kind: str = "logistic"
    thresholds: Thresholds | None = None

    @property
    def n_features(self) -> int:
        return len(self.pools) * len(self.layers) * self.hidden_size

    @torch.inference_mode()
    def score(self, features: Array) -> np.ndarray:
        """P(harmful) per sample, float32 (batch,), computed by the torch module that gets exported."""
        x = torch.as_tensor(features).to("cpu", torch.float32)
        return self.module(x).numpy()

    def decide(self, features: Array, threshold: float | None = None) -> np.ndarray:
        """Boolean gate per sample: score >= threshold (default: the calibrated one)."""
        return self.score(features) >= (self.threshold if threshold is None else threshold)

    def bind(self, model: nn.Module, adapter: str | None = None) -> TrainedProbe:
        """Record `model`'s identity (needed to save; checked at load). Returns self."""
        resolved = resolve_adapter(model, adapter)
        self.identity = identify(model, resolved.decoder_layers(model), resolved.name)
        self.check_model(model)
        return self

    def check_model(self, model: nn.Module, layers: nn.ModuleList | None = None) -> None:
        """Raise ProbeMismatchError unless this probe was trained on `model`."""
        check_probe_model(self._metadata(OnnxInfo(sha256="", opset=OPSET)), model, layers)

    def save(self, path: str | Path) -> Path:
        """Write `probe.onnx` (checked with onnx.checker) and `probe.json` into directory `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".{ONNX_FILE}.{os.getpid()}.tmp"
        try:
            opset = export_onnx(self.module, self.n_features, tmp)
            digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
            os.replace(tmp, path / ONNX_FILE)
        finally:
            tmp.unlink(missing_ok=True)
        meta = self._metadata(OnnxInfo(sha256=digest, opset=opset))
        (path / METADATA_FILE).write_text(meta.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    def _metadata(self, onnx_info: OnnxInfo) -> ProbeMetadata:
        if self.identity is None:
            raise ProbeError(
                "this probe has no model identity: call probe.bind(model) (fit_probe does) before saving or checking it"
            )
        try:
            return self._record(onnx_info)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ProbeError(
                f"this probe cannot be saved or checked: {err['msg']} at {err['loc'] or 'top level'}"
            ) from None

    def _record(self, onnx_info: OnnxInfo) -> ProbeMetadata:
        assert self.identity is not None, "checked by _metadata"
        return ProbeMetadata(
            package_version=__version__,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            kind=self.kind,
            model=self.identity,
            layers=self.layers,
            pools=self.pools,
            hidden_size=self.hidden_size,
            n_features=self.n_features,
            threshold=self.threshold,
            target_fpr=self.target_fpr,
            layer_auc=self.layer_auc,
            normalisation=self.normalisation,
            training=self.training,
            cv=self.cv,
            stack=self.stack,
            thresholds=self.thresholds,
            onnx=onnx_info,
        )


def train_probe(
    activations: torch.Tensor,
    labels: Array,
    *,
    layers: list[int] | None = None,
    target_fpr: float = 0.01,
    folds: int = 5,
    seed: int = 0,
    l2_grid: Sequence[float] = L2_GRID,
    scan_layers: bool = True,
) -> TrainedProbe:
    """Train a logistic probe on (num_layers, n, hidden) activations; labels 1 = harmful, 0 = safe.

    `layers=None` picks the layer with the best cross-validated AUC; a list concatenates those
    layers' features. Every layer's CV AUC is reported in `layer_auc` (only the given layers
    with `scan_layers=False`). Deterministic for a given seed.

    >>> acts = torch.randn(3, 40, 8); labels = torch.arange(40) % 2
    >>> acts[1, :, 0] += 4 * labels
    >>> train_probe(acts, labels).layers
    [1]
    """
    with single_thread():
        return _train(activations, labels, layers, target_fpr, folds, seed, l2_grid, scan_layers)


def _train(
    activations: torch.Tensor,
    labels: Array,
    layers: list[int] | None,
    target_fpr: float,
    folds: int,
    seed: int,
    l2_grid: Sequence[float],
    scan_layers: bool,
) -> TrainedProbe:
    x_all, y = checked_inputs(activations, labels)
    if layers is not None and (
        not layers or len(set(layers)) != len(layers) or not set(layers) <= set(range(len(x_all)))
    ):
        raise RequestError(
            f"layers must be distinct indices of the {len(x_all)} activation layers, at least one; "
            f"got {list(layers)[:16]}"
        )
    folds = min(folds, int(y.sum()), int((~y).sum()))
    fold_ids = stratified_folds(y, folds, seed)
    scan = range(x_all.shape[0]) if scan_layers or layers is None else sorted(set(layers))
    per_layer = {layer: cross_validate(x_all[layer], y, fold_ids, l2_grid) for layer in scan}
    layer_auc = {layer: round(result[1], 6) for layer, result in per_layer.items()}
    if layers is None:
        layers = [max(layer_auc, key=lambda layer: (layer_auc[layer], -layer))]
    x = torch.cat([x_all[layer] for layer in layers], dim=1)
    l2, auc, logits = per_layer[layers[0]] if len(layers) == 1 else cross_validate(x, y, fold_ids, l2_grid)
    slope, intercept = fit_platt(logits, y)
    oof = torch.sigmoid(torch.as_tensor(slope * logits + intercept)).float().numpy()
    threshold = threshold_at_fpr(oof[~y], target_fpr)
    cv = CrossValidation(
        folds=folds,
        seed=seed,
        l2=l2,
        l2_grid=list(l2_grid),
        auc=auc,
        platt=[slope, intercept],
        fpr_at_threshold=float(np.mean(oof[~y] >= threshold)),
        recall_at_threshold=float(np.mean(oof[y] >= threshold)),
    )
    module, norm = final_module(x, y, l2, (slope, intercept))
    training = TrainingSet(
        n_harmful=int(y.sum()), n_safe=int((~y).sum()), activations_sha256=activations_digest(activations, y)
    )
    return TrainedProbe(
        module=module,
        layers=list(layers),
        hidden_size=x_all.shape[2],
        threshold=threshold,
        target_fpr=target_fpr,
        layer_auc=layer_auc,
        normalisation=norm,
        training=training,
        cv=cv,
        thresholds=threshold_table(oof[~y], "out-of-fold"),
    )


def threshold_table(safe_scores: np.ndarray, chosen_on: str) -> Thresholds:
    """The threshold at each of TABLE_FPRS on these safe items' scores."""
    return Thresholds(
        chosen_on=chosen_on,  # type: ignore[arg-type]  # checked by the record
        n_safe=len(safe_scores),
        at_fpr={fpr: threshold_at_fpr(safe_scores, fpr) for fpr in TABLE_FPRS},
    )


def export_onnx(module: nn.Module, n_features: int, file: Path) -> int:
    """Export `module` to ONNX (dynamic batch; dynamo exporter), validate it; return the opset."""
    import onnx

    example = torch.zeros(2, n_features)
    with _quiet_exporter():
        program = torch.onnx.export(
            module.eval(),
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=OPSET,
            external_data=False,
            verbose=False,
            dynamo=True,
        )
    assert program is not None, "the dynamo exporter always returns a program"
    program.save(str(file))
    model = onnx.load(str(file))
    onnx.checker.check_model(model, full_check=True)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# -- inputs --------------------------------------------------------------------------------
def checked_inputs(activations: torch.Tensor, labels: Array) -> tuple[torch.Tensor, np.ndarray]:
    acts = torch.as_tensor(activations)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    if acts.ndim != 3 or acts.shape[1] != len(y):
        raise RequestError(
            f"activations must be (num_layers, n, hidden) with n = {len(y)} labels; got {tuple(acts.shape)}"
        )
    if not set(np.unique(y).tolist()) <= {0, 1} or min((y == 1).sum(), (y == 0).sum()) < 2:
        raise RequestError("labels must be 1 (harmful) / 0 (safe) with at least 2 of each for cross-validation")
    if not torch.isfinite(acts).all():
        raise RequestError("activations contain NaN/inf; check the model's dtype and inputs")
    with torch.inference_mode(False):
        return acts.detach().to("cpu", torch.float64).clone(), y.astype(bool)


def activations_digest(activations: torch.Tensor, labels: np.ndarray) -> str:
    digest = hashlib.sha256(np.asarray(labels, dtype=np.int8).tobytes())
    digest.update(torch.as_tensor(activations).detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the dynamo exporter's chatter (torchvision notices, deprecation warnings)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
