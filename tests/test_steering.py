"""SARSteer arithmetic against hand-computed values."""

import pytest
import torch

from guardrail.steering.vectors import ablate, refusal_vector, safe_basis


def test_refusal_vector_is_mean_of_paired_differences():
    torch.manual_seed(0)
    base = torch.randn(5, 8)
    shift = torch.randn(5, 8)
    v = refusal_vector(base + shift, base)
    torch.testing.assert_close(v, shift.mean(dim=0))


def test_refusal_vector_is_not_normalised():
    v = refusal_vector(torch.full((3, 4), 5.0), torch.zeros(3, 4))
    assert v.norm().item() == pytest.approx(10.0)


def test_refusal_vector_rejects_unpaired_shapes():
    with pytest.raises(ValueError, match="paired"):
        refusal_vector(torch.zeros(3, 4), torch.zeros(2, 4))


def test_safe_basis_is_orthonormal_top_principal_directions():
    torch.manual_seed(0)
    # Variance concentrated along two known axes.
    data = torch.randn(50, 6) * torch.tensor([10.0, 5.0, 0.1, 0.1, 0.1, 0.1]) + 3.0
    u = safe_basis(data, rank=2)
    assert u.shape == (6, 2)
    torch.testing.assert_close(u.T @ u, torch.eye(2), atol=1e-5, rtol=0)
    # Both directions lie in the span of the two high-variance axes.
    assert (u[:2].norm(dim=0) > 0.999).all()


def test_safe_basis_rank_capped_by_centred_sample_count():
    assert safe_basis(torch.randn(4, 16), rank=10).shape == (16, 3)


def test_safe_basis_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        safe_basis(torch.randn(1, 16), rank=3)


def test_ablated_vector_is_orthogonal_to_basis():
    torch.manual_seed(1)
    u = safe_basis(torch.randn(20, 32), rank=10)
    v = torch.randn(32)
    v_prime = ablate(v, u, strength=1.0)
    assert (u.T @ v_prime).abs().max() < 1e-5
    # What was removed lies in the safe space: v - v' = U U^T v.
    torch.testing.assert_close(v - v_prime, u @ (u.T @ v), atol=1e-5, rtol=0)


def test_ablation_strength_scales_the_projection():
    u = torch.eye(3)[:, :1]
    assert ablate(torch.tensor([2.0, 1.0, 0.0]), u, strength=0.5).tolist() == [1.0, 1.0, 0.0]
    assert ablate(torch.tensor([2.0, 1.0, 0.0]), u, strength=0.0).tolist() == [2.0, 1.0, 0.0]
