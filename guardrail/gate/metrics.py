"""Ranking metrics for the gate probe, plain numpy (no sklearn): ROC AUC, thresholds and recall
at a fixed false-positive rate, the way Prompt Guard 2 reports its classifier."""

from __future__ import annotations

import math

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def roc_auc(scores: Array, labels: Array) -> float:
    """Area under the ROC curve (Mann-Whitney U; tied scores count one half).

    >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    s, y = _flat(scores), label_mask(labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs at least one positive and one negative label")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average 1-based ranks
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def threshold_at_fpr(negative_scores: Array, fpr: float) -> float:
    """Smallest float32 threshold t with mean(negatives >= t) <= fpr (decision: score >= t).

    >>> threshold_at_fpr([0.1, 0.2, 0.3, 0.9], 0.25) > 0.3
    True
    """
    s = np.sort(_flat(negative_scores))[::-1]
    k = int(math.floor(fpr * len(s) + 1e-9))  # negatives allowed above the threshold
    if len(s) == 0:
        raise ValueError("threshold_at_fpr needs at least one negative score")
    if k >= len(s):
        return float(np.float32(s[-1]))
    return float(np.nextafter(np.float32(s[k]), np.float32(np.inf)))


def recall_at_fpr(scores: Array, labels: Array, fpr: float) -> float:
    """Recall of the positives at the threshold that keeps the negatives' FPR <= fpr.

    >>> recall_at_fpr([0.1, 0.2, 0.3, 0.25, 0.9], [0, 0, 0, 1, 1], 0.0)
    0.5
    """
    s, y = _flat(scores), label_mask(labels)
    return float(np.mean(s[y] >= threshold_at_fpr(s[~y], fpr)))


def _flat(values: Array) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().double().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def label_mask(labels: Array) -> np.ndarray:
    """Labels as a boolean mask (True = harmful)."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).reshape(-1).astype(bool)
