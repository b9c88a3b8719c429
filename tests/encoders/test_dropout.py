"""asr.encoders.dropout.Dropout: the statistics of torch's dropout at a fraction of its CPU cost."""

from __future__ import annotations

import math

import pytest
import torch

from asr.encoders.dropout import Dropout

N = 1 << 20


def _sigma(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_drop_rate_scale_and_mean_match_inverted_dropout(p):
    torch.manual_seed(0)
    x = torch.ones(N)
    y = Dropout(p).train()(x)
    dropped = y == 0
    rate = dropped.double().mean().item()
    assert abs(rate - p) < 6 * _sigma(p, N)
    rounded = round(p * 65536) / 65536
    kept = y[~dropped].double()
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - rounded)), rtol=1e-6, atol=0)
    assert abs(y.double().mean().item() - 1.0) < 6 * _sigma(p, N) / (1 - p)


def test_every_16_bit_lane_of_a_random_word_is_used_uniformly():
    # Each 64-bit draw serves four consecutive elements; a generator that leaves the top bit of
    # the word at 0 would never drop the fourth one.
    torch.manual_seed(1)
    y = Dropout(0.25).train()(torch.ones(N))
    lanes = (y == 0).view(-1, 4).double().mean(dim=0)
    assert torch.all((lanes - 0.25).abs() < 6 * _sigma(0.25, N // 4)), lanes


def test_masks_of_neighbouring_elements_are_independent():
    torch.manual_seed(2)
    d = (Dropout(0.5).train()(torch.ones(N)) == 0).double()
    both = (d[:-1] * d[1:]).mean().item()
    assert abs(both - 0.25) < 6 * _sigma(0.25, N)


def test_gradient_is_the_mask_and_the_seed_reproduces_it():
    x = torch.randn(8, 50, 64, requires_grad=True)
    layer = Dropout(0.2).train()
    torch.manual_seed(3)
    y = layer(x)
    y.sum().backward()
    keep = (y != 0).to(x.dtype) / (1 - round(0.2 * 65536) / 65536)
    torch.testing.assert_close(x.grad, keep)
    torch.testing.assert_close(y, x.detach() * keep)
    torch.manual_seed(3)
    torch.testing.assert_close(layer(x), y)
    assert not torch.equal(layer(x), y)  # the generator moved on


def test_identity_in_eval_mode_and_at_zero_p_and_zeros_at_one():
    x = torch.randn(4, 7, 3)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert torch.count_nonzero(Dropout(1.0).train()(x)) == 0
    assert Dropout(0.3).train()(torch.empty(0, 5)).shape == (0, 5)
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)


def test_half_precision_scales_each_kept_value_with_one_rounding():
    """Under bf16 autocast the activations are bf16: a kept value is ``x * scale`` rounded once,
    as torch's dropout computes it, so the output stays unbiased. The scale was rounded to bf16
    first (1.109375 for p = 0.1, 0.16% low), which shrank every dropout output alike."""
    torch.manual_seed(4)
    x = (torch.rand(N) + 1.0).to(torch.bfloat16)
    y = Dropout(0.1).train()(x)
    assert y.dtype == torch.bfloat16
    kept = y != 0
    scale = 1 / (1 - round(0.1 * 65536) / 65536)
    assert torch.equal(y[kept], (x[kept].float() * scale).to(torch.bfloat16))
    ratio = y.double().sum() / x.double().sum()
    assert abs(ratio.item() - 1.0) < 6 * _sigma(0.1, N) / 0.9
