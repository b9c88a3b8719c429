"""Infeasible utterances are treated the same way by every loss: no frames (whatever the target),
more tokens than the loss can align; empty targets stay ordinary utterances.

Function level: the per-utterance loss is ``+inf`` exactly where no alignment exists (CTC: its
``infeasible`` mask, loss zeroed), every other loss is finite, and the inputs of the infeasible
utterances get no gradient. Head level: those utterances are dropped from the sum and counted in
``metrics["num_infinite"]``; the rest sum to the losses of the utterances alone. The value the
tokens are padded with (0, or WeNet's ignore id -1) changes nothing."""

from __future__ import annotations

import pytest
import torch

from asr.heads.ctc import CTCConfig, CTCHead
from asr.heads.transducer import TransducerConfig, TransducerHead
from asr.losses.ctc import ctc_loss
from asr.losses.pruned_rnnt import get_pruning_ranges, rnnt_loss_pruned, rnnt_loss_simple
from asr.losses.pruned_tdt import tdt_loss_pruned, tdt_loss_simple, tdt_pruning_ranges
from asr.losses.rnnt import rnnt_loss
from asr.losses.tdt import tdt_loss

VOCAB, ENC_DIM, PRUNE_RANGE = 6, 8, 2
# (T_b, U_b) per utterance; the tokens have no adjacent repeats (CTC needs U_b frames).
CASES = [(0, 0), (0, 2), (3, 0), (1, 0), (2, 4), (5, 2)]
NO_FRAMES = {0, 1}
EMPTY_TARGETS = {2, 3}
# which utterances each loss cannot align (case 4: four tokens on two frames)
INFEASIBLE = {
    "ctc": NO_FRAMES | {4},  # U_b > T_b
    "full": NO_FRAMES,  # any number of symbols per frame
    "simple": NO_FRAMES,  # the simple loss runs on the full lattice
    "pruned": NO_FRAMES | {4},  # U_b > T_b * (R - 1)
    "tdt (0, 1, 2)": NO_FRAMES,  # tokens of duration 0 share a frame
    "tdt (1, 2, 3)": NO_FRAMES | {4},  # every token and the final blank take a frame
    "tdt omega (1, 2, 3)": NO_FRAMES | {4},  # the RNN-T term can align case 4: still infeasible
    "pruned_tdt": NO_FRAMES | {4},  # U_b > T_b * (R - 1), as pruned RNN-T
}
DURATIONS = {
    "tdt (0, 1, 2)": (0, 1, 2), "tdt (1, 2, 3)": (1, 2, 3), "tdt omega (1, 2, 3)": (1, 2, 3),
}
OMEGA = {"tdt omega (1, 2, 3)": 0.1}


def lengths_and_tokens(pad: int = 0, first: int = 1):
    frame_lens = torch.tensor([t for t, _ in CASES])
    token_lens = torch.tensor([u for _, u in CASES])
    tokens = torch.full((len(CASES), max(token_lens)), pad, dtype=torch.int64)
    for b, (_, num_tokens) in enumerate(CASES):
        tokens[b, :num_tokens] = torch.tensor([first, 2, 3, 4][:num_tokens])
    return frame_lens, tokens, token_lens


def blank_only_nll(blank_lp: torch.Tensor, dur_lp: torch.Tensor | None, durations) -> torch.Tensor:
    """-log P(empty target) from per-frame blank log-probs (T,) (and TDT duration log-probs
    (T, K)): all blanks; for TDT every composition of T by the blank durations."""
    if dur_lp is None:
        return -blank_lp.sum()
    alpha = [torch.zeros((), dtype=blank_lp.dtype)]
    for t in range(1, blank_lp.shape[0] + 1):
        terms = [
            alpha[t - d] + blank_lp[t - d] + dur_lp[t - d, i]
            for i, d in enumerate(durations)
            if d >= 1 and t - d >= 0
        ]
        alpha.append(torch.logsumexp(torch.stack(terms), 0))
    return -alpha[-1]


def function_losses(kind: str, pad: int = 0, first: int = 1):
    """Per-utterance losses of ``kind`` on random float64 inputs (tokens padded with ``pad``,
    each target's first token ``first``), the inputs, and for the empty targets the expected
    value."""
    gen = torch.Generator().manual_seed(4)
    frame_lens, tokens, token_lens = lengths_and_tokens(pad, first)
    batch, frames, rows = len(CASES), int(frame_lens.max()), tokens.shape[1] + 1
    expected = {}
    if kind == "ctc":
        logits = torch.randn(batch, frames, VOCAB, generator=gen, dtype=torch.float64)
        inputs = [logits.float().requires_grad_(True)]
        log_probs = torch.log_softmax(inputs[0], -1)
        losses, infeasible = ctc_loss(log_probs, frame_lens, tokens, token_lens)
        assert infeasible.tolist() == [b in INFEASIBLE[kind] for b in range(batch)]
        assert (losses[infeasible] == 0).all()
        losses = losses.masked_fill(infeasible, float("inf"))
        for b in EMPTY_TARGETS:
            expected[b] = blank_only_nll(log_probs[b, : CASES[b][0], 0], None, ())
    elif kind in ("full", "simple", "pruned"):
        am = torch.randn(batch, frames, VOCAB, generator=gen, dtype=torch.float64)
        lm = torch.randn(batch, rows, VOCAB, generator=gen, dtype=torch.float64)
        band = torch.randn(batch, frames, PRUNE_RANGE, VOCAB, generator=gen, dtype=torch.float64)
        if kind == "full":
            inputs = [(am[:, :, None] + lm[:, None]).float().requires_grad_(True)]
            losses = rnnt_loss(inputs[0], tokens, frame_lens, token_lens, reduction="none")
            lattice = inputs[0][:, :, 0]  # u = 0
        elif kind == "simple":
            inputs = [am.requires_grad_(True), lm.requires_grad_(True)]
            losses = rnnt_loss_simple(am, lm, tokens, frame_lens, token_lens, reduction="none")
            lattice = am + lm[:, :1]
        else:
            _, (px_grad, py_grad) = rnnt_loss_simple(
                am, lm, tokens, frame_lens, token_lens, return_grad=True
            )
            ranges = get_pruning_ranges(px_grad, py_grad, frame_lens, token_lens, PRUNE_RANGE)
            inputs = [band.requires_grad_(True)]
            losses = rnnt_loss_pruned(
                band, tokens, ranges, frame_lens, token_lens, reduction="none"
            )
            lattice = band[:, :, 0]  # the first position of each window: u = 0 for U_b = 0
        for b in EMPTY_TARGETS:
            blank_lp = torch.log_softmax(lattice[b, : CASES[b][0]].double(), -1)[:, 0]
            expected[b] = blank_only_nll(blank_lp, None, ())
    elif kind == "pruned_tdt":
        durations, num = (0, 1, 2, 3, 4), VOCAB + 5
        am = torch.randn(batch, frames, num, generator=gen, dtype=torch.float64)
        lm = torch.randn(batch, rows, num, generator=gen, dtype=torch.float64)
        band = torch.randn(batch, frames, PRUNE_RANGE, num, generator=gen, dtype=torch.float64)
        _, occupations = tdt_loss_simple(am, lm, tokens, frame_lens, token_lens, durations,
                                         return_grad=True)
        ranges = tdt_pruning_ranges(*occupations, frame_lens, token_lens, durations, PRUNE_RANGE)
        inputs = [band.requires_grad_(True)]
        losses = tdt_loss_pruned(band, tokens, ranges, frame_lens, token_lens, durations,
                                 reduction="none")
        for b in EMPTY_TARGETS:
            node = band[b, : CASES[b][0], 0]  # the first position of each window: u = 0
            blank_lp = torch.log_softmax(node[:, :VOCAB], -1)[:, 0]
            dur_lp = torch.log_softmax(node[:, VOCAB:], -1)
            expected[b] = blank_only_nll(blank_lp, dur_lp, durations)
    else:
        durations = DURATIONS[kind]
        logits = torch.randn(
            batch, frames, rows, VOCAB + len(durations), generator=gen, dtype=torch.float64
        )
        inputs = [logits.requires_grad_(True)]
        omega = OMEGA.get(kind, 0.0)
        losses = tdt_loss(logits, tokens, frame_lens, token_lens, durations, reduction="none",
                          omega=omega)
        for b in EMPTY_TARGETS:
            node = logits[b, : CASES[b][0], 0]  # (T_b, V + K) at u = 0
            blank_lp = torch.log_softmax(node[:, :VOCAB], -1)[:, 0]
            dur_lp = torch.log_softmax(node[:, VOCAB:], -1)
            expected[b] = (1 - omega) * blank_only_nll(blank_lp, dur_lp, durations) + (
                omega * blank_only_nll(blank_lp, None, ())
            )
    return losses, inputs, expected


@pytest.mark.parametrize("kind", sorted(INFEASIBLE))
def test_every_loss_gives_inf_exactly_where_no_alignment_exists(kind):
    losses, inputs, expected = function_losses(kind)
    infeasible = INFEASIBLE[kind]
    assert [bool(torch.isinf(x)) for x in losses] == [b in infeasible for b in range(len(CASES))]
    assert (losses[torch.isinf(losses)] > 0).all()  # +inf, never -inf or NaN
    for b, value in expected.items():  # empty targets: the all-blank paths
        torch.testing.assert_close(losses[b].double(), value.double(), rtol=1e-5, atol=1e-5)
    finite = torch.isfinite(losses)
    grads = torch.autograd.grad(torch.where(finite, losses, 0.0).sum(), inputs)
    for grad in grads:
        assert torch.isfinite(grad).all()
        for b in infeasible:
            assert grad[b].abs().max() == 0, b  # no gradient from an infeasible utterance


@pytest.mark.parametrize("kind", sorted(INFEASIBLE))
def test_every_loss_ignores_the_token_padding_value(kind):
    """Tokens padded with -1 (WeNet's ignore id) give the losses and gradients of tokens padded
    with 0; the simple, pruned and TDT losses gathered at the padding and raised an index
    error."""
    losses, inputs, _ = function_losses(kind, pad=-1)
    reference, reference_inputs, _ = function_losses(kind, pad=0)
    torch.testing.assert_close(losses, reference)
    finite = torch.isfinite(reference)
    grads = torch.autograd.grad(torch.where(finite, losses, 0.0).sum(), inputs)
    expected = torch.autograd.grad(torch.where(finite, reference, 0.0).sum(), reference_inputs)
    for grad, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(grad, want)


@pytest.mark.parametrize("kind", sorted(INFEASIBLE))
def test_every_loss_refuses_a_token_outside_the_vocabulary(kind):
    """A token id >= V (a tokenizer larger than the model's vocabulary) is an error naming the
    token; CTC, torchaudio's RNN-T and the TDT loss (which read a duration logit) returned a
    finite loss for it."""
    with pytest.raises(ValueError, match=rf"tokens\[1, 0\] = {VOCAB} is outside the vocabulary"):
        function_losses(kind, first=VOCAB)


def make_head(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "ctc":
        return CTCHead(CTCConfig(), ENC_DIM, VOCAB)
    loss = "tdt" if kind.startswith("tdt") else kind
    cfg = TransducerConfig(
        loss=loss, pred_dim=6, joiner_dim=5, prune_range=PRUNE_RANGE, warm_step=0,
        predictor_dropout=0.0, durations=DURATIONS.get(kind, (0, 1, 2, 3, 4)),
        omega=OMEGA.get(kind, 0.0),
    )  # fmt: skip
    return TransducerHead(cfg, ENC_DIM, VOCAB)


@pytest.mark.parametrize(
    "kind",
    ["ctc", "full", "pruned", "tdt (0, 1, 2)", "tdt (1, 2, 3)", "tdt omega (1, 2, 3)",
     "pruned_tdt"],
)
def test_every_head_drops_and_counts_the_same_utterances(kind):
    head = make_head(kind)
    frame_lens, tokens, token_lens = lengths_and_tokens()
    enc = torch.randn(len(CASES), int(frame_lens.max()), ENC_DIM, requires_grad=True)
    out = head.loss(enc, frame_lens, tokens, token_lens)
    infeasible = INFEASIBLE[kind]
    assert out.metrics["num_infinite"] == len(infeasible)
    alone = [
        head.loss(enc[b : b + 1, :t], frame_lens[b : b + 1],
                  tokens[b : b + 1, :u], token_lens[b : b + 1])
        for b, (t, u) in enumerate(CASES)
    ]  # fmt: skip
    assert [a.metrics["num_infinite"] for a in alone] == [
        float(b in infeasible) for b in range(len(CASES))
    ]
    torch.testing.assert_close(out.loss, sum(a.loss for a in alone))
    out.loss.backward()
    assert torch.isfinite(enc.grad).all()
    for b in range(len(CASES)):
        assert (enc.grad[b].abs().max() == 0) == (b in infeasible), b
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def empty_batch_losses(kind: str):
    """Per-utterance losses of ``kind`` on a batch of no utterance (T = 4, U = 2 wide), and the
    input tensors that require a gradient."""
    gen = torch.Generator().manual_seed(5)
    frames, rows = 4, 3
    frame_lens = torch.zeros(0, dtype=torch.int64)
    token_lens = torch.zeros(0, dtype=torch.int64)
    tokens = torch.ones(0, rows - 1, dtype=torch.int64)

    def rand(*shape):
        return torch.randn(0, *shape, generator=gen, dtype=torch.float64).requires_grad_(True)

    durations = DURATIONS.get(kind, (0, 1, 2, 3, 4))
    num = VOCAB + len(durations)
    if kind == "ctc":
        inputs = [rand(frames, VOCAB)]
        losses, infeasible = ctc_loss(inputs[0].log_softmax(-1), frame_lens, tokens, token_lens)
        assert infeasible.shape == (0,)
    elif kind == "full":
        inputs = [rand(frames, rows, VOCAB)]
        losses = rnnt_loss(inputs[0], tokens, frame_lens, token_lens, reduction="none")
    elif kind in ("simple", "pruned"):
        am, lm = rand(frames, VOCAB), rand(rows, VOCAB)
        inputs = [am, lm]
        losses, (px_grad, py_grad) = rnnt_loss_simple(
            am, lm, tokens, frame_lens, token_lens, reduction="none", return_grad=True
        )
        if kind == "pruned":
            ranges = get_pruning_ranges(px_grad, py_grad, frame_lens, token_lens, PRUNE_RANGE)
            inputs = [rand(frames, PRUNE_RANGE, VOCAB)]
            losses = rnnt_loss_pruned(inputs[0], tokens, ranges, frame_lens, token_lens,
                                      reduction="none")
    elif kind == "pruned_tdt":
        am, lm = rand(frames, num), rand(rows, num)
        _, occupations = tdt_loss_simple(am, lm, tokens, frame_lens, token_lens, durations,
                                         return_grad=True)
        ranges = tdt_pruning_ranges(*occupations, frame_lens, token_lens, durations, PRUNE_RANGE)
        inputs = [rand(frames, PRUNE_RANGE, num)]
        losses = tdt_loss_pruned(inputs[0], tokens, ranges, frame_lens, token_lens, durations,
                                 reduction="none")
    else:
        inputs = [rand(frames, rows, num)]
        losses = tdt_loss(inputs[0], tokens, frame_lens, token_lens, durations, reduction="none",
                          omega=OMEGA.get(kind, 0.0), backend="torch")
    return losses, inputs


@pytest.mark.parametrize("kind", sorted(INFEASIBLE))
def test_every_loss_takes_a_batch_of_no_utterance(kind):
    """A batch of no utterance gives (0,) losses and empty gradients, as torchaudio's RNN-T loss
    does; the torch TDT recursion could not reshape its empty buffer and PyTorch's CTC loss
    refuses empty input."""
    losses, inputs = empty_batch_losses(kind)
    assert losses.shape == (0,)
    for grad, tensor in zip(torch.autograd.grad(losses.sum(), inputs, allow_unused=True),
                            inputs, strict=True):
        assert grad is None or grad.shape == tensor.shape

