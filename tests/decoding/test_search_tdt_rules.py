"""TDT beam search rules on a hand-built joiner: the pruning bound (what it drops and keeps,
ties included), the log-add of finished hypotheses with the same tokens (their scores before
the LM's end too, by which hypotheses that cannot end are ranked), and the ranking of partial
results. Random models rarely reach these cases (a mutation audit left them
untested), so here every probability is set by hand and the expected n-best is worked out
below each table.

The joiner is :class:`TableScorer`: encoder frame ``t`` carries the number ``t``, a hypothesis'
predictor row its tokens, and ``table[(t, tokens)]`` gives P(blank, a, b) and P(duration);
a (frame, tokens) not in the table takes blank with duration 1, probability 1 (its score
stays). Shape legend: N rows, H tokens of history, V = 3 (blank 0, a = 1, b = 2), K durations.
"""

from __future__ import annotations

import math

import pytest
import torch
from search_helpers import ENC_DIM, make_model

from asr.decoding import SearchConfig
from asr.decoding.context_graph import ContextGraph
from asr.decoding.tdt_beam import TdtBeamSearch
from asr.decoding.transducer_common import TransducerScorer
from asr.heads.predictor import StatelessState

A, B = 1, 2
HISTORY = 8  # tokens a row remembers: more than any test emits

#: (frame, tokens) -> (P(blank), P(a), P(b)), (P(d) for each duration)
Table = dict[tuple[int, tuple[int, ...]], tuple[tuple[float, ...], tuple[float, ...]]]


class TableScorer(TransducerScorer):
    """A TDT scorer whose log-probabilities come from a table (module docstring); it records
    every (frame, tokens) it scores, in order."""

    def __init__(self, durations: tuple[int, ...], table: Table) -> None:
        super().__init__(make_model(transducer="tdt", durations=durations, vocab=3).heads[
            "transducer"])
        self.table = table
        self.scored: list[tuple[int, tuple[int, ...]]] = []
        self._default = ((1.0, 0.0, 0.0), (1.0,) + (0.0,) * (len(durations) - 1))
        if durations[0] != 1:
            raise ValueError("the default row moves by the first duration, which must be 1")

    def project_encoder(self, enc: torch.Tensor) -> torch.Tensor:
        return enc[..., :1]  # (..., 1): the frame number

    def initial(self, batch_size: int, device) -> tuple[torch.Tensor, StatelessState]:
        context = torch.full((batch_size, HISTORY), -1, dtype=torch.int64, device=device)
        return context.float(), StatelessState(context=context)

    def predict(self, tokens: torch.Tensor, state: StatelessState):
        context = torch.cat([state.context[:, 1:], tokens[:, None]], dim=1)  # (N, H)
        return context.float(), StatelessState(context=context)

    def log_probs(self, enc_proj: torch.Tensor, pred_proj: torch.Tensor):
        """(N, 1) frames, (N, H) histories -> (N, V) token and (N, K) duration log-probs."""
        tokens_p, durations_p = [], []
        for frame, history in zip(enc_proj[:, 0].tolist(), pred_proj.tolist()):
            key = (int(frame), tuple(int(x) for x in history if x >= 0))
            self.scored.append(key)
            token_p, duration_p = self.table.get(key, self._default)
            tokens_p.append(token_p)
            durations_p.append(duration_p)
        return torch.tensor(tokens_p).log(), torch.tensor(durations_p).log()


def search(durations, table: Table, num_frames: int, **options) -> tuple[TdtBeamSearch, list]:
    """A TDT beam search on the table (``options``: SearchConfig fields, ``context``) and the
    n-best of one utterance of ``num_frames`` frames as (tokens, probability) pairs."""
    context = options.pop("context", None)
    scorer = TableScorer(durations, table)
    searcher = TdtBeamSearch(scorer.head, SearchConfig(**options), context=context)
    searcher.scorer = scorer
    hyps = searcher(frames(num_frames), torch.tensor([num_frames]))[0]
    return searcher, [(h.tokens, math.exp(h.score)) for h in hyps]


def frames(num_frames: int) -> torch.Tensor:
    """(1, T, D) encoder output whose frame t carries the number t."""
    enc = torch.zeros(1, num_frames, ENC_DIM)
    enc[0, :, 0] = torch.arange(num_frames, dtype=torch.float32)
    return enc


def assert_nbest(found, expected) -> None:
    assert [tokens for tokens, _ in found] == [tokens for tokens, _ in expected]
    for (tokens, p), (_, q) in zip(found, expected):
        assert p == pytest.approx(q, rel=1e-5), tokens


# --- The pruning bound and the merge of finished hypotheses ------------------------------------
#
# Durations (1, 2, 3), 3 frames, beam 2. Frame 0 (start): blank .45, a .55; d1 .4, d3 .6. Moves:
# blank d3 ends the utterance, () finished at .27; a d1 -> (a) on frame 1 at .22; blank d1 ->
# () on frame 1 at .18 (third: dropped by the beam); a d3 would land on T (no loss path).
# Frame 1, (a): the blank of duration 2 finishes (a); of duration 1 it lives on to frame 2
# (L), whose default row then finishes (a) again, to be log-added. Which of the two ranks
# first, and whether L is kept, depends on frame 1's durations (each case below).

START = ((0.45, 0.55, 0.0), (0.4, 0.0, 0.6))


def test_a_live_hypothesis_above_the_beam_sizeth_finished_one_is_kept_and_merged():
    """Frame 1, (a): blank .7, b .3; d1 .6, d2 .4: (a) finishes at .22 * .28 = .0616, L lives
    at .22 * .42 = .0924 (b d1, .0396, is third). Finished (): .27, (a): .0616; L is above the
    second (the beam_size-th), so it is kept (though below the best), and its finish is
    log-added into (a): .0616 + .0924."""
    table = {(0, ()): START, (1, (A,)): ((0.7, 0.0, 0.3), (0.6, 0.4, 0.0))}
    searcher, found = search((1, 2, 3), table, 3, beam_size=2, nbest=2)
    assert_nbest(found, [((), 0.27), ((A,), 0.0616 + 0.0924)])
    assert searcher.scorer.scored == [(0, ()), (1, (A,)), (2, (A,))]


def test_a_live_hypothesis_below_the_beam_sizeth_finished_one_is_dropped():
    """Frame 1, (a): blank .7, b .3; d1 .4, d2 .6: (a) finishes at .0924, L lives at .0616,
    below both finished hypotheses (.27 and .0924): dropped, never expanded (it could only add
    to (a)), and the search ends."""
    table = {(0, ()): START, (1, (A,)): ((0.7, 0.0, 0.3), (0.4, 0.6, 0.0))}
    searcher, found = search((1, 2, 3), table, 3, beam_size=2, nbest=2)
    assert_nbest(found, [((), 0.27), ((A,), 0.0924)])
    assert searcher.scorer.scored == [(0, ()), (1, (A,))]


def test_a_live_hypothesis_tied_with_the_beam_sizeth_finished_one_is_dropped():
    """Frame 1, (a): blank 1; d1 .5, d2 .5: (a) finishes at .11 and L lives at exactly the same
    score (the same sums): it cannot beat the second finished hypothesis, so it is dropped."""
    table = {(0, ()): START, (1, (A,)): ((1.0, 0.0, 0.0), (0.5, 0.5, 0.0))}
    searcher, found = search((1, 2, 3), table, 3, beam_size=2, nbest=2)
    assert_nbest(found, [((), 0.27), ((A,), 0.11)])
    assert searcher.scorer.scored == [(0, ()), (1, (A,))]


def test_no_bound_with_length_norm_or_an_insertion_bonus():
    """The case that dropped L above, with a ranking score that can grow as a hypothesis goes
    on: L is kept and merged into (a) (only the beam drops hypotheses)."""
    table = {(0, ()): START, (1, (A,)): ((0.7, 0.0, 0.3), (0.4, 0.6, 0.0))}
    for options in ({"length_norm": 0.5}, {"insertion_bonus": 0.1}):
        searcher, _ = search((1, 2, 3), table, 3, beam_size=2, nbest=2, **options)
        assert searcher.scorer.scored == [(0, ()), (1, (A,)), (2, (A,))], options


class NoEndLM:
    """A token LM that adds nothing to a token and never lets a sentence end (log P(</s>) is
    -inf): every finished hypothesis then scores -inf."""

    vocab_size = 3

    def init_state(self) -> tuple[int, ...]:
        return ()

    def score(self, state: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(self.vocab_size)

    def advance(self, state: tuple[int, ...], token: int) -> tuple[int, ...]:
        return (*state, token)

    def final_score(self, state: tuple[int, ...]) -> float:
        return -math.inf


def test_hypotheses_that_cannot_end_rank_by_their_merged_score_before_the_end():
    """Frame 0: blank .2, a .8; d1 .4, d3 .6: () finishes at .12, (a) lives at .32. Frame 1,
    (a): blank .7, b .3; d1 .6, d2 .4: (a) finishes at .0896 and again, from frame 2, at
    .1344. With an LM that cannot end, both finished hypotheses score -inf and rank by their
    scores before the end: (a) by the two alignments' sum, .224, above ()'s .12 (its first
    alignment alone, .0896, would rank below)."""
    table = {(0, ()): ((0.2, 0.8, 0.0), (0.4, 0.0, 0.6)),
             (1, (A,)): ((0.7, 0.0, 0.3), (0.6, 0.4, 0.0))}
    scorer = TableScorer((1, 2, 3), table)
    cfg = SearchConfig(beam_size=2, nbest=2, lm_weight=0.5)
    searcher = TdtBeamSearch(scorer.head, cfg, lm=NoEndLM())
    searcher.scorer = scorer
    hyps = searcher(frames(3), torch.tensor([3]))[0]
    assert [h.tokens for h in hyps] == [(A,), ()]
    assert [h.score for h in hyps] == [-math.inf, -math.inf]


# --- Partial results ---------------------------------------------------------------------------
#
# Durations (1, 2), 8 frames, beam 3: frame 0 gives () .5, (a) .3, (b) .2, all on frame 1, and
# every later row keeps their scores (blank, duration 1). After a streaming step over the 8
# frames the three are live on the frames whose moves depend on where the stream ends.

SPLIT = {(0, ()): ((0.5, 0.3, 0.2), (1.0, 0.0))}


def partial(table: Table, **options):
    context = options.pop("context", None)
    scorer = TableScorer((1, 2), table)
    searcher = TdtBeamSearch(scorer.head, SearchConfig(beam_size=3, **options), context=context)
    searcher.scorer = scorer
    state = searcher.step(frames(8), torch.tensor([8]), searcher.init_state(1, "cpu"))
    assert sorted(h.tokens.tokens() for h in state.beams[0].hyps) == [(), (A,), (B,)]
    return searcher.partial(state)[0]


def test_the_partial_result_is_ranked_by_the_length_normalised_score():
    """length_norm 1: () scores log .5 / 1, (a) log .3 / 2, (b) log .2 / 2: (a) ranks first
    although () has the best raw score."""
    best = partial(SPLIT, length_norm=1.0)
    assert best.tokens == (A,)
    assert best.score == pytest.approx(math.log(0.3) / 2, abs=1e-5)


def test_the_partial_result_gives_back_an_unfinished_hotword_boost():
    """Hotword a b (boost 2 a token): (a) is live at log .3 + 2, a partial match whose boost
    would be given back if the stream ended, so () ranks first, at log .5."""
    graph = ContextGraph([[A, B]], vocab_size=3, default_score=2.0)
    best = partial(SPLIT, context=graph)
    assert best.tokens == ()
    assert best.score == pytest.approx(math.log(0.5), abs=1e-5)
