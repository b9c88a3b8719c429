"""CTC loss against a brute-force sum over every alignment; the Viterbi alignment against the
best of every alignment and against torchaudio."""

from __future__ import annotations

import itertools

import pytest
import torch

from asr.losses.ctc import ctc_forced_align, ctc_loss, ctc_min_frames


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


def test_zero_probability_targets_are_flagged_not_trained_as_perfect():
    """A target whose token has log-prob -inf on every frame (a masked token) has an infinite
    loss: flagged and zeroed like an impossible one. PyTorch's zero_infinity turned it into a
    loss of 0 that the heads did not count."""
    cases = [(4, [1, 2]), (4, [1, 3]), (3, [3])]
    logits, frame_lens, tokens, token_lens = _padded(cases, 4, torch.float32)
    log_probs = torch.log_softmax(logits, -1)
    log_probs[:, :, 3] = float("-inf")
    log_probs = log_probs.detach().requires_grad_(True)
    losses, infeasible = ctc_loss(log_probs, frame_lens, tokens, token_lens)
    assert infeasible.tolist() == [False, True, True]
    assert losses[0] > 0 and losses[1] == 0 and losses[2] == 0
    expected = brute_force_nll(log_probs[0, :4].detach().double(), [1, 2])
    torch.testing.assert_close(losses[0].double(), expected, rtol=1e-5, atol=1e-5)
    losses.sum().backward()
    assert log_probs.grad[1:].abs().max() == 0  # (PyTorch's gradient AT a -inf log-prob is NaN)
    assert torch.isfinite(log_probs.grad[0, :, :3]).all()


def test_min_frames_counts_repeats_within_length_only():
    tokens = torch.tensor([[1, 1, 2, 2], [3, 3, 3, 3], [1, 2, 1, 0]])
    lens = torch.tensor([4, 2, 3])
    assert ctc_min_frames(tokens, lens).tolist() == [6, 3, 3]
    assert ctc_min_frames(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2)).tolist() == [0, 0]
    pair = torch.tensor([[5, 5], [5, 6], [5, 5]])  # U = 2: one pair to compare
    assert ctc_min_frames(pair, torch.tensor([2, 2, 1])).tolist() == [3, 2, 1]


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="log_probs must be"):
        ctc_loss(torch.zeros(2, 3), torch.ones(2), torch.ones(2, 1), torch.ones(2))
    with pytest.raises(ValueError, match="token_lens has batch size 1"):
        ctc_loss(torch.zeros(2, 3, 4), torch.ones(2), torch.ones(2, 1), torch.ones(1))


def _token_index(path: tuple[int, ...]) -> list[int]:
    """Per frame the index of the target token a path emits there, -1 on blanks."""
    out, previous, index = [], 0, -1
    for symbol in path:
        if symbol != 0 and symbol != previous:
            index += 1
        out.append(index if symbol != 0 else -1)
        previous = symbol
    return out


@pytest.mark.parametrize(("frames", "target"), [c for c in CASES if c[1]] + [(6, [2, 2, 1])])
def test_forced_alignment_is_the_best_path(frames, target):
    generator = torch.Generator().manual_seed(frames * 10 + len(target))
    log_probs = torch.log_softmax(torch.randn(frames, 3, generator=generator) * 2, dim=-1)
    best = max(
        (p for p in itertools.product(range(3), repeat=frames) if _collapse(p) == tuple(target)),
        key=lambda p: float(log_probs[torch.arange(frames), torch.tensor(p)].sum()),
    )
    aligned = ctc_forced_align(
        log_probs[None], torch.tensor([frames]), torch.tensor([target]), torch.tensor([len(target)])
    )
    assert aligned[0].tolist() == _token_index(best)


def test_forced_alignment_batch_matches_torchaudio_and_splits_infeasible_rows_evenly():
    forced_align = pytest.importorskip("torchaudio.functional").forced_align
    generator = torch.Generator().manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(5, 14, 6, generator=generator) * 2, dim=-1)
    tokens = torch.tensor([[1, 2, 2, 3], [4, 5, 0, 0], [3, 3, 3, 0], [2, 0, 0, 0], [1, 2, 3, 4]])
    token_lens = torch.tensor([4, 2, 3, 1, 4])
    lens = torch.tensor([14, 7, 9, 3, 3])  # the last row is infeasible (4 tokens, 3 frames)
    aligned = ctc_forced_align(log_probs, lens, tokens, token_lens)
    for b in range(4):
        frames, count = int(lens[b]), int(token_lens[b])
        reference, _ = forced_align(
            log_probs[b : b + 1, :frames], tokens[b : b + 1, :count].int(), blank=0
        )
        assert aligned[b, :frames].tolist() == _token_index(tuple(reference[0].tolist()))
        assert (aligned[b, frames:] == -1).all()
    assert aligned[4].tolist() == [0, 1, 2] + [-1] * 11  # floor(t * 4 / 3)


def test_forced_alignment_of_empty_targets_without_a_token_column():
    """A batch whose targets are all empty may come padded to width 0: the alignment is then
    all blank (it raised on the two-state jump, which has no state to come from)."""
    log_probs = torch.log_softmax(torch.randn(2, 5, 4), dim=-1)
    lens, empty = torch.tensor([5, 3]), torch.zeros(2, dtype=torch.long)
    aligned = ctc_forced_align(log_probs, lens, torch.zeros(2, 0, dtype=torch.long), empty)
    assert aligned.tolist() == [[-1] * 5, [-1] * 5]
    padded = ctc_forced_align(log_probs, lens, torch.zeros(2, 1, dtype=torch.long), empty)
    assert padded.tolist() == aligned.tolist()


def test_forced_alignment_of_float64_log_probs_is_computed_in_float64():
    """The losses' precision rule: a float64 model's alignment is not rounded to float32. Here a
    token at frame 0 is 1e-12 less likely than a blank: float64 aligns blank then token, while
    in float32 the two tie and the tie rule (stay) puts the token on both frames."""
    c = -0.7
    log_probs = torch.tensor([[[c, c - 1e-12], [-1.7, -0.5]]], dtype=torch.float64)
    args = (torch.tensor([2]), torch.tensor([[1]]), torch.tensor([1]))
    assert ctc_forced_align(log_probs, *args).tolist() == [[-1, 0]]
    assert ctc_forced_align(log_probs.float(), *args).tolist() == [[0, 0]]
