"""Quantity loss and target-length scaling of CIF weights."""

from __future__ import annotations

import pytest
import torch

from asr.heads.cif import cif, cif_num_fires
from asr.losses.cif import quantity_loss, scale_alphas


def test_quantity_loss_hand_computed():
    alphas = torch.tensor([[0.5, 0.75, 0.25, 0.0], [0.9, 0.9, 0.9, 0.9]])
    token_lens = torch.tensor([3, 2])
    # |1.5 - 3| = 1.5 ; |3.6 - 2| = 1.6
    torch.testing.assert_close(quantity_loss(alphas, token_lens), torch.tensor([1.5, 1.6]))


def test_scale_alphas_sums_to_target_and_fires_exactly_u_times():
    alphas = torch.rand(4, 20) * 0.9 + 0.05
    alphas[1, 12:] = 0.0  # padding
    token_lens = torch.tensor([7, 3, 1, 15])
    scaled = scale_alphas(alphas, token_lens)
    torch.testing.assert_close(scaled.sum(1), token_lens.float())
    assert (scaled[1, 12:] == 0).all()
    assert cif_num_fires(scaled).tolist() == token_lens.tolist()
    _, fired_lens = cif(torch.randn(4, 20, 3), scaled)
    assert fired_lens.tolist() == token_lens.tolist()


def test_scale_alphas_gradient_keeps_total():
    alphas = (torch.rand(2, 6, dtype=torch.float64) + 0.1).requires_grad_(True)
    token_lens = torch.tensor([2, 5])
    # d/dalpha of sum(scaled) is zero: the total is fixed at U
    scale_alphas(alphas, token_lens).sum().backward()
    torch.testing.assert_close(alphas.grad, torch.zeros_like(alphas))


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="expected alphas"):
        quantity_loss(torch.rand(2, 3), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="integer"):
        scale_alphas(torch.rand(2, 3), torch.tensor([1.0, 2.0]))


def test_scale_alphas_small_and_all_zero_rows():
    """A row summing to less than 1 still scales to U exactly (the floor ``eps`` only guards
    an all-zero row, which stays all-zero rather than NaN)."""
    alphas = torch.tensor([[0.1, 0.2, 0.0], [0.0, 0.0, 0.0]])
    scaled = scale_alphas(alphas, torch.tensor([3, 2]))
    torch.testing.assert_close(scaled, torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))


def test_quantity_loss_is_float32_or_float64_as_every_loss():
    """Half precision is counted in float32; float64 weights keep float64 (they were cut to
    float32, so a float64 CIF head's loss was float32: :func:`asr.losses.precision.loss_dtype`)."""
    for dtype, want in ((torch.bfloat16, torch.float32), (torch.float32, torch.float32),
                        (torch.float64, torch.float64)):
        loss = quantity_loss(torch.full((1, 4), 0.5, dtype=dtype), torch.tensor([3]))
        assert loss.dtype == want and loss.item() == 1.0
    alphas = torch.full((1, 3), 1 / 3 + 1e-12, dtype=torch.float64)
    assert quantity_loss(alphas, torch.tensor([1])).item() == pytest.approx(3e-12, rel=1e-3)
