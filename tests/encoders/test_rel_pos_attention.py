"""Relative-position attention against a brute-force reference; masks and cache helpers."""

from __future__ import annotations

import math

import torch

from asr.encoders.attention import (
    RelativePositions,
    RelPositionMultiHeadAttention,
    chunk_attention_mask,
    roll_cache,
    sinusoid_encoding,
    streaming_attention_mask,
)
from asr.heads.decoder_layers import sinusoidal_positions


def test_chunk_mask_hand_computed():
    # T=5, chunks {0,1} {2,3} {4}, one chunk of left context.
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 0],
            [0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(chunk_attention_mask(5, 2, 1), expected)
    assert torch.equal(chunk_attention_mask(5, 2, -1), torch.ones(5, 5).tril().bool() | expected)
    assert chunk_attention_mask(5, 0, 1).all()
    assert torch.equal(chunk_attention_mask(4, 1, 0), torch.eye(4, dtype=torch.bool))


def test_streaming_mask_hand_computed():
    mask = streaming_attention_mask(torch.tensor([2, 0]), 3, torch.tensor([2, 1]), 2)
    assert mask.shape == (2, 2, 5)
    assert mask[0, 0].tolist() == [False, True, True, True, True]
    assert mask[1, 1].tolist() == [False, False, False, True, False]


def test_roll_cache_keeps_last_valid_frames():
    cache = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])[:, None, :]  # (B, 1, C) time dim 2
    new = torch.tensor([[7.0, 8.0], [9.0, 0.0]])[:, None, :]
    out = roll_cache(cache, new, torch.tensor([2, 1]), dim=2)
    assert out[:, 0].tolist() == [[3.0, 7.0, 8.0], [5.0, 6.0, 9.0]]
    same = roll_cache(cache, new, torch.tensor([0, 0]), dim=2)
    assert torch.equal(same, cache)


def test_sinusoid_values():
    enc = sinusoid_encoding(torch.tensor([0, 3, -2]), 4)
    expected = torch.tensor(
        [[math.sin(d), math.cos(d), math.sin(d / 100), math.cos(d / 100)] for d in (0, 3, -2)]
    )
    torch.testing.assert_close(enc, expected)


def _exact_sinusoids(values: list[int], dim: int) -> torch.Tensor:
    """(len(values), dim) float64 sinusoids by Python's math, the reference."""
    return torch.tensor([[f(v * 10000.0 ** (-2 * k / dim)) for k in range(dim // 2)
                          for f in (math.sin, math.cos)] for v in values], dtype=torch.float64)


def test_sinusoid_values_at_long_distances_are_the_nearest_float32():
    """At distances of thousands of frames (long audio, an unlimited left context) the float32
    angle ``d w_k`` lost precision: the table was off by 6.5e-4 at d = 10000 (D = 256). It is
    computed in float64 and cast: within float32 rounding of the exact values; the decoders'
    position table is the same function."""
    distances = [-10000, -4321, 750, 10000]
    enc = sinusoid_encoding(torch.tensor(distances), 256)
    assert enc.dtype == torch.float32
    half_step = 2.0**-25  # float32's rounding of a value in [0.5, 1), the largest here
    assert (enc.double() - _exact_sinusoids(distances, 256)).abs().max() <= half_step + 1e-11
    positions = sinusoidal_positions(3, 256, offset=9998, dtype=torch.float64)
    torch.testing.assert_close(positions, _exact_sinusoids([9998, 9999, 10000], 256),
                               rtol=0, atol=1e-10)


def _reference(module, x, mask, key_cache, value_cache):
    """Loops over (head, query, key) with the Transformer-XL formula in float64."""
    heads, head_dim = module.num_heads, module.head_dim
    batch, time, dim = x.shape
    cache = key_cache.shape[2]
    q = module.linear_q(x).view(batch, time, heads, head_dim)
    new_k = module.linear_k(x).view(batch, time, heads, head_dim).transpose(1, 2)
    new_v = module.linear_v(x).view(batch, time, heads, head_dim).transpose(1, 2)
    k = torch.cat([key_cache, new_k], 2)
    v = torch.cat([value_cache, new_v], 2)
    out = torch.zeros(batch, time, heads, head_dim, dtype=x.dtype)
    for b in range(batch):
        for h in range(heads):
            for i in range(time):
                scores = []
                for j in range(cache + time):
                    distance = i - (j - cache)
                    r = sinusoid_encoding(torch.tensor([distance]), dim).to(x.dtype)
                    p = module.linear_pos(r)[0].view(heads, head_dim)[h]
                    s = (q[b, i, h] + module.pos_bias_u[h]) @ k[b, h, j]
                    s = s + (q[b, i, h] + module.pos_bias_v[h]) @ p
                    scores.append(s / math.sqrt(head_dim) if mask[b, i, j] else -math.inf)
                weights = torch.softmax(
                    torch.stack([torch.as_tensor(s, dtype=x.dtype) for s in scores]), 0
                )
                out[b, i, h] = weights @ v[b, h]
    return module.linear_out(out.reshape(batch, time, dim))


def test_attention_matches_brute_force_with_cache():
    torch.manual_seed(0)
    module = RelPositionMultiHeadAttention(8, 2).double().eval()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    key_cache = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    value_cache = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    mask = streaming_attention_mask(torch.tensor([4, 1]), 4, torch.tensor([3, 2]), 3)
    rel_pos = RelativePositions.build(3, 4, 8, torch.device("cpu"))
    out, key, value = module(x, mask, rel_pos, key_cache, value_cache)
    with torch.no_grad():
        expected = _reference(module, x, mask, key_cache, value_cache)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    assert key.shape == value.shape == (2, 2, 3, 4)


def test_fully_masked_query_gives_zeros_not_nan():
    module = RelPositionMultiHeadAttention(8, 2).eval()
    x = torch.randn(1, 3, 8)
    mask = torch.zeros(1, 3, 3, dtype=torch.bool)
    out, _, _ = module(x, mask, RelativePositions.build(3, 0, 8, torch.device("cpu")))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, module.linear_out.bias.expand(1, 3, 8))


def test_attention_gradcheck():
    module = RelPositionMultiHeadAttention(4, 2).double()
    mask = chunk_attention_mask(3, 2, 0)[None]
    rel_pos = RelativePositions.build(3, 0, 4, torch.device("cpu"))
    x = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: module(inp, mask, rel_pos)[0], (x,))
