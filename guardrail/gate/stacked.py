"""Training probe v2: per-(pool, layer) shrinkage-LDA directions, a cross-validated logistic stacker,
Platt scaling, all folded into one linear map (``guardrail.gate.stack``); the result is a
`TrainedProbe` that saves to the same one-Gemm ONNX graph as v1 and scores on the model's device.

The threshold is chosen at `target_fpr` on a held-out selection set when one is given (what a
deployment should do: a threshold fitted on the training items' own scores is set too low),
otherwise on the out-of-fold scores of the training items.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from guardrail.errors import RequestError
from guardrail.gate.fit import L2_GRID, single_thread, stratified_folds
from guardrail.gate.metrics import Array, threshold_at_fpr
from guardrail.gate.onnx_probe import features_from_activations
from guardrail.gate.probe_record import CrossValidation, Pool, StackInfo, TrainingSet
from guardrail.gate.stack import Stacked, fit_stacked
from guardrail.gate.train import TrainedProbe, activations_digest, checked_inputs, threshold_table

DEFAULT_DEPTH = 0.75  # read the first three quarters of the layers: the gate decides before the last quarter


@dataclass(frozen=True)
class Selection:
    """Held-out items to choose the threshold on: activations as for training, and labels."""

    last: torch.Tensor
    labels: Array
    mean: torch.Tensor | None = None


def default_layers(num_layers: int) -> list[int]:
    """Layers 0 .. ceil(0.75 * num_layers) - 1."""
    return list(range(max(1, math.ceil(DEFAULT_DEPTH * num_layers))))


def train_stacked_probe(
    last: torch.Tensor,
    labels: Array,
    *,
    mean: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    target_fpr: float = 0.01,
    select: Selection | None = None,
    folds: int = 5,
    seed: int = 0,
    l2_grid: Sequence[float] = L2_GRID,
) -> TrainedProbe:
    """Probe v2 on (num_layers, n, hidden) last-position activations and, when given, their prompt
    means (then both pools are read); labels 1 = harmful, 0 = safe. Deterministic for a seed.

    >>> held_out = Selection(sel_last, sel_labels, sel_mean)  # doctest: +SKIP
    >>> probe = train_stacked_probe(last, labels, mean=mean, select=held_out)  # doctest: +SKIP
    """
    x_last, y = checked_inputs(last, labels)
    pools: list[Pool] = ["last"] if mean is None else ["last", "mean"]
    layers = list(layers) if layers is not None else default_layers(x_last.shape[0])
    if not layers or len(set(layers)) != len(layers) or not set(layers) <= set(range(x_last.shape[0])):
        raise RequestError(f"layers must be distinct indices of the {x_last.shape[0]} activation layers; got {layers}")
    sources = {"last": x_last, "mean": None if mean is None else checked_inputs(mean, labels)[0]}
    blocks = [sources[pool][layer] for pool in pools for layer in layers]  # type: ignore[index]
    folds = min(folds, int(y.sum()), int((~y).sum()))
    with single_thread():
        stacked = fit_stacked(blocks, y, stratified_folds(y, folds, seed), l2_grid)
    probe = TrainedProbe(
        module=stacked.module,
        layers=layers,
        hidden_size=x_last.shape[2],
        threshold=0.5,  # set below, on the selection set or the out-of-fold scores
        target_fpr=target_fpr,
        layer_auc={layer: stacked.block_auc[i] for i, layer in enumerate(layers)},
        normalisation=stacked.normalisation,
        training=TrainingSet(n_harmful=int(y.sum()), n_safe=int((~y).sum()), activations_sha256=_digest(last, mean, y)),
        cv=_cv_record(stacked, folds, seed, l2_grid, y, target_fpr),
        pools=pools,
        stack=StackInfo(
            blocks=[f"{pool}:{layer}" for pool in pools for layer in layers],
            block_auc=stacked.block_auc,
            stacker_weights=stacked.stacker_weights,
        ),
        kind="stacked-lda",
    )
    safe_scores, chosen_on = stacked.oof_scores[~y], "out-of-fold"
    if select is not None:
        safe_scores, chosen_on = selection_safe_scores(probe, select), "selection set"
    probe.threshold = threshold_at_fpr(safe_scores, target_fpr)
    probe.thresholds = threshold_table(safe_scores, chosen_on)
    return probe


def selection_safe_scores(probe: TrainedProbe, select: Selection) -> np.ndarray:
    """The probe's scores of the selection set's safe items."""
    y = np.asarray(select.labels).reshape(-1).astype(bool)
    if (~y).sum() < 1:
        raise RequestError("the selection set needs safe items (label 0) to choose a threshold on")
    features = features_from_activations(select.last, probe.layers, select.mean, probe.pools)
    return probe.score(features)[~y]


def _cv_record(
    stacked: Stacked, folds: int, seed: int, l2_grid: Sequence[float], y: np.ndarray, target_fpr: float
) -> CrossValidation:
    """What cross-validation saw, at the out-of-fold threshold for `target_fpr` (as v1 records it)."""
    oof = stacked.oof_scores
    threshold = threshold_at_fpr(oof[~y], target_fpr)
    return CrossValidation(
        folds=folds,
        seed=seed,
        l2=stacked.l2,
        l2_grid=list(l2_grid),
        auc=stacked.auc,
        platt=list(stacked.platt),
        fpr_at_threshold=float(np.mean(oof[~y] >= threshold)),
        recall_at_threshold=float(np.mean(oof[y] >= threshold)),
    )


def _digest(last: torch.Tensor, mean: torch.Tensor | None, y: np.ndarray) -> str:
    return activations_digest(last if mean is None else torch.cat([torch.as_tensor(last), torch.as_tensor(mean)]), y)
