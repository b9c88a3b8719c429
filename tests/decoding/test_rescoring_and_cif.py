"""Attention rescoring re-ranks the first pass by the documented formula; CIF greedy search and
the CIF fire frames (timestamps)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from search_helpers import ENC_DIM, VOCAB, encoder_output, make_model

from asr.decoding import SearchConfig, build_searcher
from asr.decoding.cif_greedy import cif_hypotheses
from asr.decoding.context_graph import ContextGraph
from asr.decoding.rescoring import NbestRescoring
from asr.heads.aed import AEDConfig, AEDHead
from asr.types import Hypothesis

INF = float("inf")


@pytest.mark.parametrize(
    ("heads", "first_pass"),
    [
        (dict(ctc=True, aed=True, transducer="pruned"), "ctc_prefix_beam"),
        (dict(aed=True, transducer="pruned"), "transducer_beam"),
        (dict(aed=True, transducer="tdt"), "tdt_beam"),
    ],
)
def test_attention_rescoring_formula(heads, first_pass):
    model = make_model(**heads)
    enc, enc_lens = encoder_output([9, 6])
    cfg = SearchConfig(beam_size=4, nbest=4, ctc_weight=0.3)
    first = build_searcher(first_pass, model, cfg)(enc, enc_lens)
    rescored = build_searcher("attention_rescoring", model, cfg)(enc, enc_lens)
    aed = model.heads["aed"]
    for b, (hyps, expected_pool) in enumerate(zip(rescored, first)):
        assert sorted(h.tokens for h in hyps) == sorted(h.tokens for h in expected_pool)
        with torch.no_grad():
            att = aed.score_sequences(
                enc[b : b + 1], enc_lens[b : b + 1], [h.tokens for h in expected_pool]
            )
        expected = sorted(
            (
                (0.7 * float(a) + 0.3 * h.score, h.tokens, h.frames)
                for a, h in zip(att, expected_pool)
            ),
            reverse=True,
        )
        assert [h.tokens for h in hyps] == [tokens for _, tokens, _ in expected]
        assert [h.frames for h in hyps] == [frames for _, _, frames in expected]
        assert [h.score for h in hyps] == pytest.approx([s for s, _, _ in expected], abs=1e-4)
    # nbest below the beam: the first pass still proposes beam_size hypotheses, the best
    # nbest of them after rescoring are returned
    top = build_searcher("attention_rescoring", model, replace(cfg, nbest=2))(enc, enc_lens)
    assert [[h.tokens for h in n] for n in top] == [[h.tokens for h in n[:2]] for n in rescored]


@pytest.mark.parametrize("cif_options", [{}, {"segments": "ctc"}, {"end_slot": True}])
def test_cif_rescoring_formula(cif_options):
    """The first pass's n-best, re-ranked by (1 - w) * the CIF decoder's score of each hypothesis
    with its own embeddings + w * the first-pass score."""
    model = make_model(ctc=True, cif=True, cif_options=cif_options)
    enc, enc_lens = encoder_output([9, 6])
    cfg = SearchConfig(beam_size=4, nbest=4, ctc_weight=0.3)
    first = build_searcher("ctc_prefix_beam", model, cfg)(enc, enc_lens)
    rescored = build_searcher("cif_rescoring", model, cfg)(enc, enc_lens)
    cif = model.heads["cif"]
    for b, (hyps, pool) in enumerate(zip(rescored, first)):
        assert len(pool) > 1
        with torch.no_grad():
            second = [
                float(cif.score_tokens(enc[b : b + 1], enc_lens[b : b + 1],
                                       torch.tensor([list(h.tokens) or [0]]),
                                       torch.tensor([len(h.tokens)])))
                for h in pool
            ]
        expected = sorted(
            ((0.7 * s + 0.3 * h.score, h.tokens) for s, h in zip(second, pool)), reverse=True
        )
        assert [h.tokens for h in hyps] == [tokens for _, tokens in expected]
        assert [h.score for h in hyps] == pytest.approx([s for s, _ in expected], abs=1e-4)
    # the second pass matters: with weight 1 the order is the first pass's
    only_first = build_searcher("cif_rescoring", model, SearchConfig(beam_size=4, nbest=4,
                                                                    ctc_weight=1.0))(enc, enc_lens)
    assert [[h.tokens for h in n] for n in only_first] == [[h.tokens for h in n] for n in first]


class _FixedNbest:
    """A first pass and a second head with given scores (one utterance)."""

    def __init__(self, first: list[float], second: list[float]) -> None:
        self.hyps = [Hypothesis(tokens=(k + 1,), score=s) for k, s in enumerate(first)]
        self.second = torch.tensor(second)

    def __call__(self, enc, enc_lens):
        return [list(self.hyps)]

    def score_sequences(self, enc, enc_lens, hyps):
        return self.second[: len(hyps)]


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_a_hypothesis_impossible_on_either_side_stays_impossible(weight):
    """A first-pass hypothesis that cannot end (-inf, e.g. inside a word under a word LM) or one
    the second head rules out: at a weight of 0 or 1 the formula's ``0 * -inf`` made its score
    NaN, which ranked anywhere; it is -inf, last, at every weight. Equal scores keep the first
    pass's order; an n-best shorter than ``nbest`` is returned whole."""
    fixed = _FixedNbest([-INF, -1.0, -2.0, -1.0, -3.0], [-1.0, -2.0, -2.5, -2.0, -INF])
    cfg = SearchConfig(beam_size=6, nbest=6, ctc_weight=weight)
    hyps = NbestRescoring(fixed, fixed, cfg)(torch.zeros(1, 3, 2), torch.tensor([3]))[0]
    assert [h.tokens for h in hyps] == [(2,), (4,), (3,), (1,), (5,)]
    assert [h.score for h in hyps[3:]] == [-INF, -INF]
    assert hyps[0].score == pytest.approx((1 - weight) * -2.0 + weight * -1.0)


def test_an_utterance_possible_on_neither_side_at_once_keeps_the_first_pass(caplog):
    """The second head scores only hypotheses the first pass rules out (-inf), and rules out
    the others: every mixed score is -inf, as when it scores none. The n-best came back ranked,
    every score -inf; it now keeps the first pass's n-best and scores, with the warning."""
    fixed = _FixedNbest([-1.0, -2.0, -INF], [-INF, -INF, -3.0])
    cfg = SearchConfig(beam_size=3, nbest=3, ctc_weight=0.3)
    with caplog.at_level("WARNING", logger="asr.decoding.rescoring"):
        hyps = NbestRescoring(fixed, fixed, cfg)(torch.zeros(1, 3, 2), torch.tensor([3]))[0]
    assert hyps == fixed.hyps
    assert [h.score for h in hyps] == [-1.0, -2.0, -INF]
    assert "1 utterance" in caplog.records[0].getMessage()


@pytest.mark.parametrize(("heads", "name"), [(dict(ctc=True, aed=True), "attention_rescoring"),
                                           (dict(ctc=True, cif=True), "cif_rescoring")])
def test_an_utterance_without_frames_keeps_the_first_pass_empty_hypothesis(heads, name):
    """An utterance of no frames, batched with others, is the empty hypothesis of score 0, as
    in the first pass: the second head is not asked to score it (it would attend to padding),
    and the other utterances are rescored as when alone."""
    model = make_model(**heads)
    enc, enc_lens = encoder_output([9, 0, 6])
    cfg = SearchConfig(beam_size=4, nbest=4, ctc_weight=0.3)
    searcher = build_searcher(name, model, cfg)
    nbests = searcher(enc, enc_lens)
    assert nbests[1] == [Hypothesis(tokens=())]
    for b in (0, 2):
        alone = searcher(enc[b: b + 1, : int(enc_lens[b])], enc_lens[b: b + 1])[0]
        assert [h.tokens for h in nbests[b]] == [h.tokens for h in alone]
        assert [h.score for h in nbests[b]] == pytest.approx([h.score for h in alone], abs=1e-4)


@pytest.mark.parametrize(("heads", "name"), [(dict(ctc=True, aed=True), "attention_rescoring"),
                                           (dict(ctc=True, cif=True), "cif_rescoring")])
def test_a_hotword_graph_given_to_a_rescoring_searcher_biases_its_first_pass(heads, name):
    """With the first pass's weight 1 the rescoring keeps the first pass's order, so it must
    equal the biased CTC prefix beam's n-best, not the plain one."""
    model = make_model(**heads)
    enc, enc_lens = encoder_output([9, 6])
    cfg = SearchConfig(beam_size=4, nbest=4, ctc_weight=1.0)
    graph = ContextGraph([[3, 4], [5]], vocab_size=model.heads["ctc"].vocab_size,
                         default_score=4.0)
    biased = build_searcher("ctc_prefix_beam", model, cfg, context=graph)(enc, enc_lens)
    plain = build_searcher("ctc_prefix_beam", model, cfg)(enc, enc_lens)
    assert [[h.tokens for h in n] for n in biased] != [[h.tokens for h in n] for n in plain]
    got = build_searcher(name, model, cfg, context=graph)(enc, enc_lens)
    assert [[h.tokens for h in n] for n in got] == [[h.tokens for h in n] for n in biased]


def test_cif_greedy_is_the_argmax_of_the_fired_tokens():
    model = make_model(cif=True)
    enc, enc_lens = encoder_output([12, 7])
    hyps = build_searcher("cif_greedy", model)(enc, enc_lens)
    with torch.no_grad():
        logits, token_lens = model.heads["cif"](enc, enc_lens)
    for b, count in enumerate(token_lens.tolist()):
        expected = tuple(t for t in logits[b, :count].argmax(-1).tolist() if t != 0)
        assert hyps[b][0].tokens == expected
    assert int(token_lens.sum()) > 0


def test_cif_fire_frames_follow_the_sequential_integrate_and_fire_loop():
    """Token k fires on the frame where the running sum first reaches k + 1 (the paper's
    accumulate / fire / carry loop); the tail token on the last weighted frame."""
    from asr.heads.cif import cif_fire_frames, cif_num_fires

    alphas = torch.tensor(
        [
            [0.4, 0.4, 0.4, 2.0, 0.2, 0.5, 0.0],  # sum 3.9: frames 2, 3, 3, tail on 5
            [0.9, 0.05, 0.3, 0.0, 0.0, 0.0, 0.0],  # sum 1.25: frame 2, tail dropped
            [0.0] * 7,
        ]
    )
    lens = cif_num_fires(alphas)
    assert lens.tolist() == [4, 1, 0]
    frames = cif_fire_frames(alphas, lens)
    assert frames.tolist() == [[2, 3, 3, 5], [2, 0, 0, 0], [0, 0, 0, 0]]
    for b, (row, count) in enumerate(zip(alphas.tolist(), lens.tolist())):
        total, fired, expected = 0.0, 0, []
        for t, alpha in enumerate(row):
            total += alpha
            while fired < count and total >= fired + 1 - 1e-6:
                expected.append(t)
                fired += 1
        last = max((t for t, a in enumerate(row) if a > 0), default=0)
        expected += [last] * (count - fired)
        assert frames[b, :count].tolist() == expected


def test_cif_greedy_timestamps_are_the_fire_frames_of_the_kept_tokens():
    model = make_model(cif=True)
    enc, enc_lens = encoder_output([12, 7])
    hyps = build_searcher("cif_greedy", model)(enc, enc_lens)
    with torch.no_grad():
        out = model.heads["cif"].infer(enc, enc_lens)
    for b, count in enumerate(out.token_lens.tolist()):
        pairs = zip(out.logits[b, :count].argmax(-1).tolist(), out.fire_frames[b].tolist())
        assert hyps[b][0].frames == tuple(f for t, f in pairs if t != 0)


def test_cif_hypotheses_read_only_the_fired_positions():
    """Positions past an utterance's fired tokens are padding: an end label there neither ends
    nor lengthens the hypothesis; one among the fired tokens ends it (itself not a token)."""
    from asr.heads.cif import CIFInference

    end, vocab = 5, 6
    labels = torch.tensor([[3, 4, 1, end], [3, end, 4, 2]])  # fired: 2 and 4 tokens
    log_probs = torch.log_softmax(torch.nn.functional.one_hot(labels, vocab).float() * 4, -1)
    out = CIFInference(logits=log_probs, token_lens=torch.tensor([2, 4]),
                       fire_frames=torch.tensor([[1, 3, 5, 7], [0, 2, 4, 6]]))
    first, second = cif_hypotheses(out, log_probs, end_id=end)
    assert (first.tokens, first.frames) == ((3, 4), (1, 3))
    assert first.score == pytest.approx(float(log_probs[0, :2].max(-1).values.sum()))
    assert (second.tokens, second.frames) == ((3,), (0,))
    assert second.score == pytest.approx(float(log_probs[1, :2].max(-1).values.sum()))


def test_attention_rescoring_ranks_hypotheses_longer_than_the_learned_positions_last():
    """The first pass has no token limit, but an AED with learned positions (``max_len`` 4:
    at most 3 tokens) raised "position 4 exceeds max_len=4" on a longer hypothesis and
    stopped the decode. Such a hypothesis now gets the AED score -inf: it ranks after every
    hypothesis the AED scores, in first-pass order, with score -inf."""
    model = make_model(ctc=True, aed=True)
    torch.manual_seed(0)
    aed = AEDHead(
        AEDConfig(d_model=16, num_heads=2, num_layers=2, ffn_dim=32, dropout=0.0,
                  positional="learned", max_len=4),
        ENC_DIM, VOCAB,
    ).eval()
    model.heads["aed"] = aed
    enc, enc_lens = encoder_output([6, 4])
    cfg = SearchConfig(beam_size=6, nbest=6, ctc_weight=0.3)
    first = build_searcher("ctc_prefix_beam", model, cfg)(enc, enc_lens)
    assert any(len(h.tokens) > 3 for hyps in first for h in hyps)  # the case is exercised
    rescored = build_searcher("attention_rescoring", model, cfg)(enc, enc_lens)
    assert all(any(len(h.tokens) <= 3 for h in pool) for pool in first)  # the AED ranks some
    for hyps, pool in zip(rescored, first):
        long = [h.tokens for h in pool if len(h.tokens) > 3]
        assert [h.tokens for h in hyps[len(hyps) - len(long):]] == long
        assert all(h.score == -INF for h in hyps[len(hyps) - len(long):])
        assert all(h.score > -INF for h in hyps[: len(hyps) - len(long)])


def test_attention_rescoring_keeps_the_first_pass_when_the_aed_scores_no_hypothesis(caplog):
    """When every first-pass hypothesis of an utterance was longer than the AED's learned
    positions, every mixed score was -inf and the n-best came back with no score to rank or
    report. Such an utterance now keeps the first pass's n-best and scores (a warning logged
    once per searcher); the others are rescored as before."""
    model = make_model(ctc=True, aed=True)
    torch.manual_seed(0)
    model.heads["aed"] = AEDHead(
        AEDConfig(d_model=16, num_heads=2, num_layers=2, ffn_dim=32, dropout=0.0,
                  positional="learned", max_len=3),
        ENC_DIM, VOCAB,
    ).eval()
    enc, enc_lens = encoder_output([9, 2])
    cfg = SearchConfig(beam_size=3, nbest=2, ctc_weight=0.3, blank_penalty=4.0)
    first = build_searcher("ctc_prefix_beam", model, replace(cfg, nbest=3))(enc, enc_lens)
    assert all(len(h.tokens) > 2 for h in first[0])  # the AED scores none of utterance 0's
    assert any(len(h.tokens) <= 2 for h in first[1])
    searcher = build_searcher("attention_rescoring", model, cfg)
    with caplog.at_level("WARNING", logger="asr.decoding.rescoring"):
        rescored = searcher(enc, enc_lens)
        again = searcher(enc, enc_lens)
    assert rescored[0] == first[0][:2] == again[0]
    assert all(h.score > -INF for h in rescored[0])
    assert rescored[1][0].score > -INF and rescored[1] != first[1][:2]
    assert [r.getMessage() for r in caplog.records].count(
        caplog.records[0].getMessage()) == 1 and "1 utterance" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("heads", "name"),
    [
        (dict(ctc=True, aed=True), "attention_rescoring"),
        (dict(aed=True, transducer="pruned"), "attention_rescoring"),
        (dict(aed=True, transducer="tdt"), "attention_rescoring"),
        (dict(cif=True, transducer="tdt"), "cif_rescoring"),
    ],
)
def test_streaming_rescoring_in_chunks_equals_offline(heads, name):
    """Fed in chunks of 2 frames (the streams of a batch at their own lengths), the final
    hypothesis is the offline rescoring's over every first pass (the TDT one holds frames
    until the end is known), and each stream keeps its own frames."""
    from asr.decoding import build_streaming_searcher

    model = make_model(**heads)
    enc, enc_lens = encoder_output([9, 6])
    cfg = SearchConfig(beam_size=4, nbest=4, ctc_weight=0.3)
    offline = build_searcher(name, model, cfg)(enc, enc_lens)
    searcher = build_streaming_searcher(name, model, cfg)
    state = searcher.init_state(2, "cpu")
    for start in range(0, enc.shape[1], 2):
        lens = (enc_lens - start).clamp(0, 2)
        state = searcher.step(enc[:, start: start + 2], lens, state)
    final = searcher.finalize(state)
    for got, expected in zip(final, offline):
        assert (got.tokens, got.frames) == (expected[0].tokens, expected[0].frames)
        assert got.score == pytest.approx(expected[0].score, abs=1e-5)
    assert [h.num_frames for h in state.frames] == enc_lens.tolist()
