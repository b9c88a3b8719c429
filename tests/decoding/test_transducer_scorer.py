"""TransducerScorer against references built by hand: the TDT move masks, lookahead and
can_stop against a brute force over the loss paths' rule (a path ends with a blank landing on
frame T), the blank penalty in the log-probabilities, and the normalised decision scores."""

from __future__ import annotations

import pytest
import torch
from search_helpers import make_model

from asr.decoding.transducer_common import TransducerScorer

HORIZON = 80  # frames left checked; beyond every table's cap (m^2 + m + 1 <= 31 here)
DURATIONS = [(0, 1, 2), (1, 2, 3), (0, 2, 4), (2, 3), (0, 3, 5), (0, 1, 2, 3, 4)]


def reachable(durations: tuple[int, ...]) -> list[bool]:
    """reachable[n]: n frames are a sum of positive durations (0 included)."""
    out = [True] + [False] * HORIZON
    for n in range(1, HORIZON + 1):
        out[n] = any(n >= d > 0 and out[n - d] for d in durations)
    return out


def expected_masks(durations, remaining: int | None, no_stay: bool) -> torch.Tensor:
    """(2, K) bool: may blank / a token take each duration with ``remaining`` frames left."""
    ends = reachable(durations)
    allowed = torch.zeros(2, len(durations), dtype=torch.bool)
    for k, d in enumerate(durations):
        if remaining is None:  # only "blank moves" and no_stay
            allowed[0, k] = d > 0
            allowed[1, k] = not (no_stay and d == 0)
            continue
        allowed[0, k] = d > 0 and remaining - d >= 0 and ends[remaining - d]
        allowed[1, k] = remaining - d >= 1 and ends[remaining - d] and not (no_stay and d == 0)
    return allowed


def tdt_scorer(durations) -> TransducerScorer:
    return TransducerScorer(make_model(transducer="tdt", durations=durations).heads["transducer"])


@pytest.mark.parametrize("durations", DURATIONS, ids=str)
def test_move_masks_equal_the_brute_force_rule_for_every_frame_count(durations):
    scorer = tdt_scorer(durations)
    remaining = torch.arange(HORIZON - max(durations))
    for no_stay in (False, True):
        flags = torch.full_like(remaining, no_stay, dtype=torch.bool)
        masks = scorer.tdt_move_masks(remaining, flags, torch.device("cpu"))
        for r in remaining.tolist():
            assert torch.equal(masks[r] == 0, expected_masks(durations, r, no_stay)), (r, no_stay)
        unknown = scorer.tdt_move_masks(None, torch.tensor([no_stay]), torch.device("cpu"))
        assert torch.equal(unknown[0] == 0, expected_masks(durations, None, no_stay))
    assert torch.equal(
        scorer.tdt_move_masks(None, None, torch.device("cpu"))[0] == 0,
        expected_masks(durations, None, False),
    )


@pytest.mark.parametrize("durations", DURATIONS, ids=str)
def test_lookahead_and_can_stop_equal_the_brute_force(durations):
    """lookahead: the smallest r0 whose masks every r >= r0 shares (None when they cycle);
    can_stop: some r >= 1 allows no move."""
    scorer = tdt_scorer(durations)
    table = [
        torch.stack([expected_masks(durations, r, s) for s in (False, True)])
        for r in range(HORIZON - max(durations))
    ]
    settled = len(table) - 1
    while settled > 0 and torch.equal(table[settled - 1], table[-1]):
        settled -= 1
    periodic = any(not torch.equal(table[-1], table[-1 - k]) for k in range(1, 6))
    assert scorer.lookahead == (None if periodic else settled)
    assert scorer.can_stop == any(not t[0].any() for t in table[1:])


@pytest.mark.parametrize("durations", [(0, 1, 2), (1, 2, 3)], ids=str)
def test_blank_penalty_lowers_the_blank_logit_before_normalising(durations):
    """log_probs and decide against log-softmaxes of the joiner's logits in float64; decide's
    advance is the duration's value (not its index)."""
    head = make_model(transducer="tdt", durations=durations).heads["transducer"]
    generator = torch.Generator().manual_seed(0)
    enc, pred = torch.randn(3, 16, generator=generator), torch.randn(3, 16, generator=generator)
    logits = head.joiner.join(enc, pred).double()
    token_logits = logits[:, : head.vocab_size].clone()
    token_logits[:, head.blank_id] -= 2.5
    scorer = TransducerScorer(head, blank_penalty=2.5)
    token_lp, duration_lp = scorer.log_probs(enc, pred)
    torch.testing.assert_close(token_lp.double(), token_logits.log_softmax(-1), atol=1e-5, rtol=0)
    expected_dur = logits[:, head.vocab_size :].log_softmax(-1)
    torch.testing.assert_close(duration_lp.double(), expected_dur, atol=1e-5, rtol=0)
    # decide + decision_log_probs: the best pair's log P(label) + log P(duration)
    masks = scorer.position_masks(torch.tensor([50, 50, 50]), 3, torch.device("cpu"))[:3]
    label, advance, _, best, raw = scorer.decide(enc, pred, scorer.output_bias(enc.device), masks)
    grid = token_logits.log_softmax(-1)[:, :, None] + expected_dur[:, None, :]
    if 0 in durations:
        grid[:, head.blank_id, durations.index(0)] = float("-inf")  # blank never stays
    flat = grid.flatten(1).argmax(-1).tolist()
    assert label.tolist() == [i // len(durations) for i in flat]
    assert advance.tolist() == [durations[i % len(durations)] for i in flat]
    torch.testing.assert_close(
        scorer.decision_log_probs(best, raw).double(), grid.flatten(1).max(-1).values,
        atol=1e-5, rtol=0,
    )  # fmt: skip
