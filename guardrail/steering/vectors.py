"""SARSteer arithmetic (arXiv 2510.17633, section 3): pure tensor functions, no model code.

Shapes: activations are (n_samples, hidden); a per-layer vector is (hidden,); a safe basis
is (hidden, rank) with orthonormal columns.
"""

from __future__ import annotations

import torch

# The paper's defaults (DESIGN.md section 1).
DEFAULT_ALPHA = 0.1
DEFAULT_RANK = 10
DEFAULT_STRENGTH = 1.0
DEFAULT_REFUSAL_TEXT = "I cannot assist with that."


def refusal_vector(with_refusal: torch.Tensor, without_refusal: torch.Tensor) -> torch.Tensor:
    """Mean of paired differences h(a, t+p) - h(a, t): the text-derived refusal direction.

    Not normalised: the steering strength alpha is relative to this scale.

    >>> refusal_vector(torch.ones(3, 4), torch.zeros(3, 4)).tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    if with_refusal.shape != without_refusal.shape:
        raise ValueError(
            f"paired activations differ in shape: {tuple(with_refusal.shape)} vs {tuple(without_refusal.shape)}"
        )
    diff = with_refusal.double() - without_refusal.double()
    return diff.mean(dim=0).float()


def safe_basis(safe_activations: torch.Tensor, rank: int) -> torch.Tensor:
    """Top-`rank` principal directions of mean-centred benign activations, as columns.

    The rank is capped at what the data supports (n_samples - 1 after centring).

    >>> safe_basis(torch.randn(8, 16), rank=3).shape
    torch.Size([16, 3])
    """
    if safe_activations.ndim != 2 or safe_activations.shape[0] < 2:
        raise ValueError("safe-space basis needs at least 2 safe activations as a (n, hidden) matrix")
    centred = safe_activations.double() - safe_activations.double().mean(dim=0, keepdim=True)
    usable = min(rank, centred.shape[0] - 1, centred.shape[1])
    # Rows are samples, so the hidden-space directions are the right singular vectors.
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[:usable].T.contiguous().float()


def ablate(vector: torch.Tensor, basis: torch.Tensor, strength: float = DEFAULT_STRENGTH) -> torch.Tensor:
    """v' = v - strength * U U^T v: remove the part of v that lies in the safe space.

    >>> u = torch.eye(3)[:, :1]
    >>> ablate(torch.tensor([2.0, 1.0, 0.0]), u).tolist()
    [0.0, 1.0, 0.0]
    """
    if basis.numel() == 0:
        return vector.clone()
    u = basis.double()
    v = vector.double()
    return (v - strength * (u @ (u.T @ v))).to(vector.dtype)
