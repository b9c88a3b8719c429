"""CTC loss against a brute-force sum over every alignment."""

from __future__ import annotations

import itertools

import pytest
import torch

from asr.losses.ctc import ctc_loss, ctc_min_frames


def _collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    out, previous = [], None
    for symbol in path:
        if symbol != previous and symbol != 0:
            out.append(symbol)
        previous = symbol
    return tuple(out)


def brute_force_nll(log_probs: torch.Tensor, target: list[int]) -> torch.Tensor:
    """-log sum over all length-T paths that collapse to ``target`` (autograd-able)."""
    num_frames, vocab = log_probs.shape
    scores = [
        log_probs[torch.arange(num_frames), torch.tensor(path)].sum()
        for path in itertools.product(range(vocab), repeat=num_frames)
        if _collapse(path) == tuple(target)
    ]
    if not scores:
        return torch.tensor(float("inf"), dtype=log_probs.dtype)
    return -torch.logsumexp(torch.stack(scores), dim=0)


CASES = [  # (frames, target)
    (5, [1, 2]),
    (5, [1, 1]),  # repeat: needs a blank between
    (4, [2, 1, 2]),
    (3, [1]),
    (5, []),  # empty target: all blanks
    (4, [1, 1, 2]),  # 4 frames = minimum (3 tokens + 1 repeat)
]


def _padded(cases, vocab, dtype):
    batch = len(cases)
    max_frames = max(f for f, _ in cases)
    max_tokens = max(1, max(len(t) for _, t in cases))
    logits = torch.randn(batch, max_frames, vocab, dtype=dtype)
    tokens = torch.zeros(batch, max_tokens, dtype=torch.long)
    for row, (_, target) in enumerate(cases):
        tokens[row, : len(target)] = torch.tensor(target, dtype=torch.long)
    frame_lens = torch.tensor([f for f, _ in cases])
    token_lens = torch.tensor([len(t) for _, t in cases])
    return logits, frame_lens, tokens, token_lens


def test_matches_brute_force_loss_and_gradient():
    vocab = 3
    logits, frame_lens, tokens, token_lens = _padded(CASES, vocab, torch.float64)
    logits32 = logits.float().requires_grad_(True)
    losses, infeasible = ctc_loss(torch.log_softmax(logits32, -1), frame_lens, tokens, token_lens)
    assert losses.dtype == torch.float32
    assert not infeasible.any()
    losses.sum().backward()

    ref_logits = logits.clone().requires_grad_(True)
    ref = []
    for row, (frames, target) in enumerate(CASES):
        lp = torch.log_softmax(ref_logits[row, :frames], dim=-1)
        ref.append(brute_force_nll(lp, target))
    ref = torch.stack(ref)
    ref.sum().backward()
    torch.testing.assert_close(losses.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits32.grad.double(), ref_logits.grad, rtol=1e-4, atol=1e-5)
    # frames beyond each length get no gradient
    assert logits32.grad[3, 3:].abs().max() == 0


def test_impossible_targets_are_zeroed_and_flagged():
    cases = [(3, [1, 1, 1]), (4, [1, 2]), (2, [2, 1, 2])]  # needs 5, ok, needs 3
    logits, frame_lens, tokens, token_lens = _padded(cases, 3, torch.float32)
    logits.requires_grad_(True)
    losses, infeasible = ctc_loss(torch.log_softmax(logits, -1), frame_lens, tokens, token_lens)
    assert infeasible.tolist() == [True, False, True]
    assert brute_force_nll(torch.log_softmax(logits[0, :3].double(), -1), [1, 1, 1]).isinf()
    assert losses[0] == 0 and losses[2] == 0 and losses[1] > 0
    losses.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0].abs().max() == 0 and logits.grad[2].abs().max() == 0


def test_min_frames_counts_repeats_within_length_only():
    tokens = torch.tensor([[1, 1, 2, 2], [3, 3, 3, 3], [1, 2, 1, 0]])
    lens = torch.tensor([4, 2, 3])
    assert ctc_min_frames(tokens, lens).tolist() == [6, 3, 3]
    assert ctc_min_frames(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2)).tolist() == [0, 0]


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="log_probs must be"):
        ctc_loss(torch.zeros(2, 3), torch.ones(2), torch.ones(2, 1), torch.ones(2))
    with pytest.raises(ValueError, match="token_lens has batch size 1"):
        ctc_loss(torch.zeros(2, 3, 4), torch.ones(2), torch.ones(2, 1), torch.ones(1))
