"""The maths of probe training: L2 logistic regression on standardised features, fitted by damped
Newton in the training data's row space, stratified k-fold cross-validation over the L2 grid, Platt
scaling of the out-of-fold logits, and the final fit folded into one Linear + Sigmoid module.
`guardrail.gate.train` composes these into a `TrainedProbe`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from guardrail.gate.metrics import roc_auc
from guardrail.gate.probe_record import Normalisation

L2_GRID = (10.0, 1.0, 0.1, 0.01, 1e-3, 1e-4)  # penalty on the mean log-loss; strongest first (warm starts)


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold id per sample: each class shuffled with `seed`, then dealt round-robin.

    >>> stratified_folds(np.array([1, 1, 0, 0]), 2, 0).tolist().count(0)
    2
    """
    rng, ids = np.random.default_rng(seed), np.empty(len(labels), dtype=np.int64)
    for cls in (False, True):
        members = rng.permutation(np.flatnonzero(labels == cls))
        ids[members] = np.arange(len(members)) % folds
    return ids


def standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = x.mean(0), x.std(0)
    return mean, torch.where(std > 1e-6 * (1 + mean.abs()), std, torch.ones_like(std))


def _fit(p: torch.Tensor, y: torch.Tensor, l2: float, init: torch.Tensor | None = None) -> torch.Tensor:
    """argmin mean BCE(p w + b, y) + l2/2 |w|^2 by damped Newton; returns [w, b] (float64)."""
    a = torch.cat([p, torch.ones(len(p), 1, dtype=p.dtype)], dim=1)
    reg = torch.full((a.shape[1],), l2, dtype=p.dtype)
    reg[-1] = 0.0
    objective = lambda t: F.binary_cross_entropy_with_logits(a @ t, y) + 0.5 * (reg * t * t).sum()
    theta = torch.zeros(a.shape[1], dtype=p.dtype) if init is None else init.clone()
    for _ in range(100):
        prob = torch.sigmoid(a @ theta)
        grad = a.T @ (prob - y) / len(y) + reg * theta
        if grad.abs().max() < 1e-10:
            break
        hess = (a.T * (prob * (1 - prob))) @ a / len(y) + torch.diag(reg + 1e-12)
        step, t, f0 = torch.linalg.solve(hess, grad), 1.0, objective(theta)
        while objective(theta - t * step) > f0 - 1e-4 * t * (grad @ step) and t > 1e-10:
            t /= 2
        theta = theta - t * step
    return theta


def _row_space(z: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis V (d, r) of z's row space: an L2 solution w lies in it (w = V c, |w| = |c|),
    so the fit runs in r <= n dimensions instead of d."""
    _, s, vh = torch.linalg.svd(z, full_matrices=False)
    return vh[s > s[0] * 1e-10].T


def cross_validate(
    x: torch.Tensor, y: np.ndarray, fold_ids: np.ndarray, l2_grid: Sequence[float]
) -> tuple[float, float, np.ndarray]:
    """(best l2, its pooled out-of-fold AUC, its out-of-fold logits); ties go to the stronger l2."""
    target = torch.as_tensor(y, dtype=torch.float64)
    oof = {l2: np.zeros(len(y)) for l2 in l2_grid}
    for fold in range(int(fold_ids.max()) + 1):
        train, test = torch.as_tensor(fold_ids != fold), torch.as_tensor(fold_ids == fold)
        mean, std = standardiser(x[train])
        z_train, z_test = (x[train] - mean) / std, (x[test] - mean) / std
        basis, params = _row_space(z_train), None
        for l2 in sorted(l2_grid, reverse=True):  # warm start from the stronger penalty
            params = _fit(z_train @ basis, target[train], l2, params)
            oof[l2][test.numpy()] = (z_test @ basis @ params[:-1] + params[-1]).numpy()
    aucs = {l2: roc_auc(scores, y) for l2, scores in oof.items()}
    best = max(aucs, key=lambda l2: (aucs[l2], l2))
    return float(best), aucs[best], oof[best]


def fit_platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling of out-of-fold logits: P(harmful) = sigmoid(slope * logit + intercept).

    Keeps the score a usable probability instead of saturating at 1.0 in float32 (a weakly
    penalised probe on n << d features separates its training set)."""
    scale = float(np.std(logits)) or 1.0
    p = torch.as_tensor(logits / scale, dtype=torch.float64)[:, None]
    theta = _fit(p, torch.as_tensor(y, dtype=torch.float64), 1e-2)
    return float(theta[0]) / scale, float(theta[1])


def final_module(
    x: torch.Tensor, y: np.ndarray, l2: float, platt: tuple[float, float]
) -> tuple[SigmoidProbe, Normalisation]:
    """Fit on all data; fold (x - mean) / std and Platt scaling into one Linear (float64, then float32)."""
    mean, std = standardiser(x)
    z = (x - mean) / std
    basis = _row_space(z)
    params = _fit(z @ basis, torch.as_tensor(y, dtype=torch.float64), l2)
    weight = platt[0] * (basis @ params[:-1]) / std
    bias = platt[0] * params[-1] - (weight * mean).sum() + platt[1]
    linear = nn.Linear(x.shape[1], 1)
    with torch.no_grad():
        linear.weight.copy_(weight.float()[None])
        linear.bias.copy_(bias.float()[None])
    norm = Normalisation(
        n_fitted=len(y),
        mean_abs_max=float(mean.abs().max()),
        std_min=float(std.min()),
        std_median=float(std.median()),
        std_max=float(std.max()),
        n_constant=int((x.std(0) <= 1e-6 * (1 + mean.abs())).sum()),
    )
    return SigmoidProbe(linear).eval(), norm


class SigmoidProbe(nn.Module):
    """sigmoid(linear(features)), one score per sample: the module a probe exports."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(features)).squeeze(-1)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Small dense algebra runs fastest on one thread; several threads on a shared CPU can be 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
