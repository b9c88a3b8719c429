"""Pruned TDT loss: the simple TDT loss is the TDT loss of the additive joiner; the pruned loss
equals the full TDT loss when the band covers every label (float64, values and gradients);
every utterance the band can hold is finite at U = 50 for several prune ranges; the bands from
the model's own occupations keep nearly all of its probability."""

from __future__ import annotations

import pytest
import torch

from asr.losses.pruned_rnnt import do_rnnt_pruning
from asr.losses.pruned_tdt import tdt_loss_pruned, tdt_loss_simple, tdt_pruning_ranges
from asr.losses.tdt import tdt_loss

DURATIONS = (0, 1, 2, 3, 4)
NUM_DURATIONS = len(DURATIONS)


def _batch(frame_lens, token_lens, vocab, seed, num_durations=NUM_DURATIONS, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    batch, frames, tokens = len(frame_lens), max(frame_lens), max(token_lens)
    am = scale * torch.randn(batch, frames, vocab + num_durations, generator=gen,
                             dtype=torch.float64)
    lm = scale * torch.randn(batch, tokens + 1, vocab + num_durations, generator=gen,
                             dtype=torch.float64)
    symbols = torch.randint(1, vocab, (batch, tokens), generator=gen)
    return am, lm, symbols, torch.tensor(frame_lens), torch.tensor(token_lens)


def _band(logits: torch.Tensor, ranges: torch.Tensor) -> torch.Tensor:
    """The band of a full ``(B, T, U + 1, N)`` logits tensor at ``ranges (B, T, R)``."""
    index = ranges.clamp(max=logits.shape[2] - 1)[..., None].expand(-1, -1, -1, logits.shape[-1])
    return torch.gather(logits, 2, index)


@pytest.mark.parametrize("durations", [(0, 1, 2), (1, 2, 4), DURATIONS], ids=str)
def test_simple_loss_is_the_tdt_loss_of_the_additive_joiner(durations):
    am, lm, symbols, frame_lens, token_lens = _batch([7, 5, 6, 0], [3, 1, 4, 2], 6, seed=1,
                                                     num_durations=len(durations))
    am.requires_grad_(True)
    lm.requires_grad_(True)
    simple, (token_occ, blank_occ) = tdt_loss_simple(
        am, lm, symbols, frame_lens, token_lens, durations, reduction="none", return_grad=True
    )
    full = tdt_loss(am[:, :, None] + lm[:, None], symbols, frame_lens, token_lens, durations,
                    reduction="none")
    torch.testing.assert_close(simple, full, rtol=1e-12, atol=1e-12)
    assert simple[3] == float("inf") and token_occ[3].abs().sum() == 0  # no frames
    finite = torch.isfinite(full)
    grads = [torch.autograd.grad(x[finite].sum(), (am, lm)) for x in (simple, full)]
    for got, ref in zip(*grads):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    # the occupations are d(log-likelihood)/d(arc weight): at each utterance's start node, the
    # arcs leaving (0, 0) carry the whole probability
    start = token_occ[:, 0, 0].sum(-1) + blank_occ[:, 0, 0].sum(-1)
    torch.testing.assert_close(start[finite], torch.ones(int(finite.sum()), dtype=start.dtype))


@pytest.mark.parametrize("sigma, omega", [(0.0, 0.0), (0.05, 0.1)])
def test_pruned_equals_full_when_the_band_covers_every_label(sigma, omega):
    vocab, durations = 7, (0, 1, 2, 4)
    am, lm, symbols, frame_lens, token_lens = _batch([9, 6, 0, 7], [4, 2, 1, 0], vocab, seed=2,
                                                     num_durations=len(durations))
    _, occupations = tdt_loss_simple(am, lm, symbols, frame_lens, token_lens, durations,
                                     return_grad=True)
    prune_range = symbols.shape[1] + 1
    ranges = tdt_pruning_ranges(*occupations, frame_lens, token_lens, durations, prune_range)
    assert (ranges == torch.arange(prune_range)).all()  # every window is [0, U + 1)
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 9, 5, vocab + len(durations), generator=gen, dtype=torch.float64)
    results = []
    for pruned in (True, False):
        x = logits.clone().requires_grad_(True)
        kwargs = dict(sigma=sigma, reduction="none", omega=omega)
        if pruned:
            loss = tdt_loss_pruned(_band(x, ranges), symbols, ranges, frame_lens, token_lens,
                                   durations, **kwargs)
        else:
            loss = tdt_loss(x, symbols, frame_lens, token_lens, durations, **kwargs)
        torch.where(torch.isfinite(loss), loss, 0.0).sum().backward()
        results.append((loss.detach(), x.grad))
    (pruned, grad_pruned), (full, grad_full) = results
    assert torch.isinf(full[2]) and torch.isinf(pruned[2])  # no frames
    torch.testing.assert_close(pruned, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_pruned, grad_full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("prune_range", [2, 3, 5])
def test_every_utterance_the_band_can_hold_is_finite_at_u50(prune_range):
    """Random simple-loss occupations (and trained-like peaked ones), U up to 50, ragged: the
    pruned loss is finite exactly where ``U_b <= T_b * (R - 1)``, and never below the full
    loss (a band keeps a subset of the paths)."""
    vocab = 30
    frame_lens = [60, 26, 40, 17, 50, 9]
    token_lens = [50, 49, 33, 17, 0, 30]
    for scale in (1.0, 4.0):
        am, lm, symbols, f_lens, u_lens = _batch(frame_lens, token_lens, vocab, seed=4,
                                                 scale=scale)
        _, occupations = tdt_loss_simple(am, lm, symbols, f_lens, u_lens, DURATIONS,
                                         return_grad=True)
        ranges = tdt_pruning_ranges(*occupations, f_lens, u_lens, DURATIONS, prune_range)
        logits = am[:, :, None] + lm[:, None]
        pruned = tdt_loss_pruned(_band(logits, ranges), symbols, ranges, f_lens, u_lens,
                                 DURATIONS, reduction="none")
        full = tdt_loss(logits, symbols, f_lens, u_lens, DURATIONS, reduction="none")
        holds = u_lens <= f_lens * (prune_range - 1)
        assert torch.equal(torch.isfinite(pruned), holds), (scale, pruned)
        assert (pruned[holds] >= full[holds] - 1e-9).all()


@pytest.mark.parametrize("seed", [5, 6, 7, 8])
def test_bands_from_the_models_own_occupations_keep_its_probability(seed):
    """When the real joiner IS the additive one (peaked random logits), the R = 4 band chosen
    from its own occupations keeps >= 75% of its probability (lost < 0.3 nats; measured 0.005 to
    0.26). Counting only the nodes a path visits, not the frames its long arcs jump over, would
    lose up to 6.8 nats on these seeds."""
    am, lm, symbols, frame_lens, token_lens = _batch([40, 32], [12, 9], 10, seed=seed, scale=3.0)
    _, occupations = tdt_loss_simple(am, lm, symbols, frame_lens, token_lens, DURATIONS,
                                     return_grad=True)
    ranges = tdt_pruning_ranges(*occupations, frame_lens, token_lens, DURATIONS, 4)
    logits = am[:, :, None] + lm[:, None]
    pruned = tdt_loss_pruned(_band(logits, ranges), symbols, ranges, frame_lens, token_lens,
                             DURATIONS, reduction="none")
    full = tdt_loss(logits, symbols, frame_lens, token_lens, DURATIONS, reduction="none")
    assert ((pruned - full) < 0.3).all(), (pruned, full)


def test_band_logits_from_the_joiner_projections_and_float32():
    """The head's path: projected encoder / predictor outputs gathered on the band
    (``do_rnnt_pruning``) give the same loss as the band of the full joiner output."""
    torch.manual_seed(6)
    enc, pred = torch.randn(2, 8, 5), torch.randn(2, 4, 5)
    out = torch.nn.Linear(5, 6 + len(DURATIONS))
    symbols, frame_lens, token_lens = torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor(
        [8, 6]), torch.tensor([3, 2])
    ranges = torch.arange(3)[None, None] + torch.tensor([0, 0, 1, 1, 1, 1, 1, 1])[None, :, None]
    ranges = ranges.expand(2, 8, 3)
    band = out(torch.tanh(sum(do_rnnt_pruning(enc, pred, ranges))))
    full_logits = out(torch.tanh(enc[:, :, None] + pred[:, None]))
    loss = tdt_loss_pruned(band, symbols, ranges, frame_lens, token_lens, DURATIONS)
    ref = tdt_loss_pruned(_band(full_logits, ranges), symbols, ranges, frame_lens, token_lens,
                          DURATIONS)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref)


def test_durations_without_0_or_1_are_refused():
    band = torch.randn(1, 3, 2, 4 + 3)
    args = (torch.tensor([[1]]), torch.zeros(1, 3, 2, dtype=torch.int64) + torch.arange(2),
            torch.tensor([3]), torch.tensor([1]))
    for durations in ((1, 2, 3), (0, 2, 4)):
        with pytest.raises(ValueError, match="durations 0 and 1"):
            tdt_loss_pruned(band, *args, durations)
