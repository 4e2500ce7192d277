"""Probe v2's maths: one shrinkage-LDA direction per feature block (a layer's last-token or mean-pooled
activations), the blocks' scores combined by a cross-validated logistic stacker, Platt-scaled, and
the whole chain folded into one linear map over the concatenated blocks, so the exported graph is
still ``sigmoid(features @ w + b)`` and the guard can score it on the model's device.

Shrinkage is Ledoit and Wolf's (2004) closed form on standardised features; the stacker is
trained on out-of-fold block scores (Wolpert's stacked generalisation), never on in-sample ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from guardrail.gate.fit import cross_validate, final_module, fit_platt, standardiser
from guardrail.gate.probe_record import Normalisation


@dataclass
class Stacked:
    """The folded probe and what cross-validation saw."""

    module: nn.Module  # Linear + Sigmoid over the concatenated blocks
    normalisation: Normalisation  # of the stacker's inputs (the block scores)
    block_auc: list[float]  # out-of-fold ROC AUC of each block's LDA score
    stacker_weights: list[float]  # per block, on standardised block scores
    l2: float
    auc: float  # out-of-fold ROC AUC of the stacked score
    platt: tuple[float, float]
    oof_scores: np.ndarray  # out-of-fold P(harmful), for the threshold


def ledoit_wolf(z: torch.Tensor) -> torch.Tensor:
    """Shrunk covariance of centred rows z (n, d): (1 - s) S + s mu I with Ledoit-Wolf's s."""
    n, d = z.shape
    cov = z.T @ z / n
    mu = torch.trace(cov) / d
    delta = ((cov - mu * torch.eye(d, dtype=z.dtype)) ** 2).sum() / d
    beta = ((z * z).sum(1) ** 2).sum() - n * (cov**2).sum()
    beta = torch.clamp(beta / (n * n * d), min=0.0)
    shrink = float(torch.clamp(beta / delta, max=1.0)) if float(delta) > 0 else 1.0
    return (1 - shrink) * cov + shrink * mu * torch.eye(d, dtype=z.dtype)


def lda_direction(x: torch.Tensor, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w, mean, std): the shrinkage-LDA direction on standardised x; score = ((x - mean) / std) @ w."""
    mean, std = standardiser(x)
    z = (x - mean) / std
    pos, neg = z[torch.as_tensor(y)], z[torch.as_tensor(~y)]
    centred = torch.cat([pos - pos.mean(0), neg - neg.mean(0)])
    # a floor on the diagonal keeps a block with no spread (constant features, a tiny set) solvable
    cov = ledoit_wolf(centred) + 1e-6 * torch.eye(z.shape[1], dtype=z.dtype)
    w = torch.linalg.solve(cov, pos.mean(0) - neg.mean(0))
    return w / w.norm().clamp_min(1e-12), mean, std


def block_scores(blocks: Sequence[torch.Tensor], y: np.ndarray, fold_ids: np.ndarray) -> np.ndarray:
    """(n, blocks) out-of-fold LDA scores: each fold's rows scored by directions fitted without them."""
    scores = np.zeros((len(y), len(blocks)))
    for fold in range(int(fold_ids.max()) + 1):
        train, test = fold_ids != fold, fold_ids == fold
        for b, x in enumerate(blocks):
            w, mean, std = lda_direction(x[torch.as_tensor(train)], y[train])
            scores[test, b] = (((x[torch.as_tensor(test)] - mean) / std) @ w).numpy()
    return scores


def fit_stacked(
    blocks: Sequence[torch.Tensor], y: np.ndarray, fold_ids: np.ndarray, l2_grid: Sequence[float]
) -> Stacked:
    """Fit the stacked probe on float64 blocks (n, d_b) with boolean labels y."""
    from guardrail.gate.metrics import roc_auc

    oof = block_scores(blocks, y, fold_ids)
    s = torch.as_tensor(oof)
    l2, auc, logits = cross_validate(s, y, fold_ids, l2_grid)
    slope, intercept = fit_platt(logits, y)
    stacker, norm = final_module(s, y, l2, (slope, intercept))
    directions = [lda_direction(x, y) for x in blocks]
    linear = stacker.linear
    v = linear.weight.detach().double().reshape(-1)
    weight = torch.cat([v[b] * w / std for b, (w, _, std) in enumerate(directions)])
    bias = float(linear.bias.detach().double()[0]) - sum(
        float(v[b] * ((mean / std) @ w)) for b, (w, mean, std) in enumerate(directions)
    )
    folded = nn.Linear(weight.numel(), 1)
    with torch.no_grad():
        folded.weight.copy_(weight.float()[None])
        folded.bias.fill_(bias)
    stacker.linear = folded
    oof_p = 1.0 / (1.0 + np.exp(-(slope * logits + intercept)))
    return Stacked(
        module=stacker,
        normalisation=norm,
        block_auc=[round(roc_auc(oof[:, b], y), 6) for b in range(len(blocks))],
        stacker_weights=[float(x) for x in v],
        l2=l2,
        auc=auc,
        platt=(slope, intercept),
        oof_scores=oof_p,
    )
