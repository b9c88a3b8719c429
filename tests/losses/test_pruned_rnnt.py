"""Pruned RNN-T: simple loss == torchaudio on the additive joiner; pruned == full when the band
covers the lattice; pruning bounds are valid; float64 gradcheck of the pieces."""

import pytest
import torch

from asr.losses.mutual_information import mutual_information_recursion
from asr.losses.pruned_rnnt import (
    do_rnnt_pruning,
    gather_log_softmax,
    get_pruning_ranges,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    simple_lattice_logprobs,
)
from asr.losses.rnnt import rnnt_loss

FRAME_LENS = torch.tensor([9, 6, 8])
TOKEN_LENS = torch.tensor([4, 2, 3])


def make_inputs(vocab=7, frames=9, num_tokens=4, dtype=torch.float32):
    batch = len(FRAME_LENS)
    am = torch.randn(batch, frames, vocab, dtype=dtype)
    lm = torch.randn(batch, num_tokens + 1, vocab, dtype=dtype)
    tokens = torch.randint(1, vocab, (batch, num_tokens))
    return am, lm, tokens


class TinyJoiner(torch.nn.Module):
    def __init__(self, dim=6, vocab=7):
        super().__init__()
        self.out = torch.nn.Linear(dim, vocab)

    def join(self, enc_proj, pred_proj):
        return self.out(torch.tanh(enc_proj + pred_proj))


def test_simple_loss_equals_torchaudio_on_additive_joiner():
    am, lm, tokens = make_inputs()
    loss = rnnt_loss_simple(am, lm, tokens, FRAME_LENS, TOKEN_LENS, reduction="none")
    full_logits = am[:, :, None, :] + lm[:, None, :, :]
    ref = rnnt_loss(full_logits, tokens, FRAME_LENS, TOKEN_LENS, reduction="none")
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("lm_scale,am_scale", [(0.25, 0.0), (0.1, 0.2), (1.0, 0.0)])
def test_smoothed_simple_logprobs_match_explicit_mixture(lm_scale, am_scale):
    am, lm, tokens = make_inputs(dtype=torch.float64)
    px, py = simple_lattice_logprobs(am, lm, tokens, FRAME_LENS, lm_scale, am_scale)
    joint = torch.log_softmax(am[:, :, None] + lm[:, None], dim=-1)  # (B, T, U+1, V)
    lm_lp = torch.log_softmax(lm, dim=-1)[:, None]  # (B, 1, U+1, V)
    am_lp = torch.log_softmax(am, dim=-1)[:, :, None]  # (B, T, 1, V)
    mixed = (1 - lm_scale - am_scale) * joint + lm_scale * lm_lp + am_scale * am_lp
    for b in range(len(FRAME_LENS)):
        for u in range(tokens.shape[1] + 1):
            for t in range(am.shape[1]):
                torch.testing.assert_close(py[b, u, t], mixed[b, t, u, 0])
                if u < tokens.shape[1]:
                    expected = mixed[b, t, u, tokens[b, u]] if t < FRAME_LENS[b] else -torch.inf
                    torch.testing.assert_close(px[b, u, t], torch.as_tensor(expected).double())
    assert torch.isneginf(px[:, :, -1]).all()


def full_and_band(prune_range, dtype=torch.float32):
    am, lm, tokens = make_inputs(dtype=dtype)
    _, (px_grad, py_grad) = rnnt_loss_simple(
        am, lm, tokens, FRAME_LENS, TOKEN_LENS, return_grad=True
    )
    ranges = get_pruning_ranges(px_grad, py_grad, FRAME_LENS, TOKEN_LENS, prune_range)
    joiner = TinyJoiner().to(dtype)
    enc_proj = torch.randn(am.shape[0], am.shape[1], 6, dtype=dtype)
    pred_proj = torch.randn(am.shape[0], tokens.shape[1] + 1, 6, dtype=dtype)
    full_logits = joiner.join(enc_proj[:, :, None], pred_proj[:, None])
    band_logits = joiner.join(*do_rnnt_pruning(enc_proj, pred_proj, ranges))
    return tokens, ranges, full_logits, band_logits


@pytest.mark.parametrize("prune_range", [5, 7])  # U + 1 = 5 and wider than the lattice
def test_pruned_equals_full_when_band_covers_lattice(prune_range):
    tokens, ranges, full_logits, band_logits = full_and_band(prune_range)
    assert band_logits.shape[2] == prune_range
    pruned = rnnt_loss_pruned(band_logits, tokens, ranges, FRAME_LENS, TOKEN_LENS, reduction="none")
    full = rnnt_loss(full_logits, tokens, FRAME_LENS, TOKEN_LENS, reduction="none")
    torch.testing.assert_close(pruned, full, rtol=1e-5, atol=1e-4)


def test_narrow_band_loses_paths_but_stays_finite():
    tokens, ranges, full_logits, band_logits = full_and_band(2)
    pruned = rnnt_loss_pruned(band_logits, tokens, ranges, FRAME_LENS, TOKEN_LENS, reduction="none")
    full = rnnt_loss(full_logits, tokens, FRAME_LENS, TOKEN_LENS, reduction="none")
    assert torch.isfinite(pruned).all() and (pruned >= full - 1e-4).all()
    assert (pruned > full + 1e-3).any()


@pytest.mark.parametrize("prune_range", [2, 3, 4])
def test_pruning_ranges_are_valid_bands(prune_range):
    torch.manual_seed(prune_range)
    tokens, ranges, _, _ = full_and_band(prune_range)
    s_begin = ranges[:, :, 0]
    assert torch.equal(ranges - s_begin[..., None], torch.arange(prune_range).expand_as(ranges))
    for b in range(len(FRAME_LENS)):
        frames, num_tokens = int(FRAME_LENS[b]), int(TOKEN_LENS[b])
        start = s_begin[b, :frames]
        assert start[0] == 0 and start[-1] + prune_range - 1 >= num_tokens
        assert (start >= 0).all() and (
            start + prune_range - 1 <= max(num_tokens, prune_range - 1)
        ).all()
        steps = start[1:] - start[:-1]
        assert (steps >= 0).all() and (steps <= prune_range - 1).all()


def test_ranges_follow_the_occupation_mass():
    # All occupation on the diagonal s = t: the windows must contain it.
    frames, num_tokens, prune_range = 6, 5, 2
    py_grad = torch.zeros(1, num_tokens + 1, frames)
    px_grad = torch.zeros(1, num_tokens, frames + 1)
    for t in range(frames):
        py_grad[0, min(t, num_tokens), t] = 1.0
    ranges = get_pruning_ranges(
        px_grad, py_grad, torch.tensor([frames]), torch.tensor([num_tokens]), prune_range
    )
    for t in range(frames):
        assert min(t, num_tokens) in ranges[0, t].tolist()


def test_gradcheck_simple_loss_float64():
    am, lm, tokens = make_inputs(vocab=5, frames=5, num_tokens=2, dtype=torch.float64)
    frame_lens, token_lens = torch.tensor([5, 3, 4]), torch.tensor([2, 1, 2])
    am.requires_grad_(True)
    lm.requires_grad_(True)

    def fn(am, lm):
        return rnnt_loss_simple(
            am, lm, tokens, frame_lens, token_lens, 0.25, 0.1, reduction="none", backend="torch"
        )

    assert torch.autograd.gradcheck(fn, (am, lm))


def test_gradcheck_pruned_loss_float64():
    tokens, ranges, _, band_logits = full_and_band(3, dtype=torch.float64)
    logits = band_logits.detach()[:, :, :, :5].clone().requires_grad_(True)
    tokens = tokens.clamp(max=4)

    def fn(logits):
        return rnnt_loss_pruned(logits, tokens, ranges, FRAME_LENS, TOKEN_LENS, reduction="none")

    # fast_mode checks random directional derivatives (the full Jacobian is 400+ columns).
    assert torch.autograd.gradcheck(fn, (logits,), fast_mode=True)


def test_simple_occupations_are_the_gradient_of_the_recursion():
    am, lm, tokens = make_inputs(dtype=torch.float64)
    _, (px_grad, py_grad) = rnnt_loss_simple(
        am, lm, tokens, FRAME_LENS, TOKEN_LENS, return_grad=True
    )
    px, py = simple_lattice_logprobs(am, lm, tokens, FRAME_LENS)
    px.requires_grad_(True)
    py.requires_grad_(True)
    total = mutual_information_recursion(px, py, TOKEN_LENS, FRAME_LENS, backend="torch")
    gx, gy = torch.autograd.grad(total.sum(), (px, py))
    torch.testing.assert_close(gx, px_grad)
    torch.testing.assert_close(gy, py_grad)


def test_gather_log_softmax_values_and_gradcheck():
    logits = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 4, (2, 3, 2))
    ref = torch.log_softmax(logits[..., :4], dim=-1).gather(-1, index)
    torch.testing.assert_close(gather_log_softmax(logits, index, 4), ref)
    assert torch.autograd.gradcheck(lambda x: gather_log_softmax(x, index, 4), (logits,))


def test_simple_loss_with_occupations_has_the_same_gradients():
    grads = []
    am0, lm0, tokens = make_inputs(dtype=torch.float64)
    for return_grad in (False, True):
        am, lm = am0.clone().requires_grad_(True), lm0.clone().requires_grad_(True)
        out = rnnt_loss_simple(
            am, lm, tokens, FRAME_LENS, TOKEN_LENS, 0.25, return_grad=return_grad
        )
        loss = out[0] if return_grad else out
        grads.append(torch.autograd.grad(loss * 1.5, (am, lm)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
