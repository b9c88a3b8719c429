"""CIF searches: beam 1 equals greedy search (also with a CTC head at weight 0, an end slot, CTC
segments, rescoring), the n-best of a wide beam equals enumeration of every path (with LM fusion
and CTC scores), an LM flips a close call, the end slot stops both searches, the rescored score
is the decoder's score of the hypothesis."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from search_helpers import encoder_output, make_model
from test_lm import ARPA

from asr.decoding import NgramLM, SearchConfig, build_searcher
from asr.decoding.base import log_add
from asr.decoding.cif_beam import CifBeamSearch
from asr.decoding.lm import UNK
from asr.heads.cif import CIFInference
from asr.losses.ctc import ctc_loss
from asr.types import Hypothesis


@pytest.fixture
def lm(tmp_path) -> NgramLM:
    path = tmp_path / "lm.arpa"
    path.write_text(ARPA)
    return NgramLM.from_arpa(path, vocab_size=7)


def test_beam_of_one_and_the_unfused_beams_best_equal_greedy_search():
    model = make_model(cif=True)
    enc, enc_lens = encoder_output([14, 9, 5], scale=2.0)
    greedy = build_searcher("cif_greedy", model)(enc, enc_lens)
    assert sum(len(h[0].tokens) for h in greedy) > 3
    for beam_size in (1, 4):  # without rescoring, the scores are the greedy path's too
        cfg = SearchConfig(beam_size=beam_size, nbest=beam_size, rescore_weight=0.0)
        beam = build_searcher("cif_beam", model, cfg)(enc, enc_lens)
        for g, b in zip(greedy, beam):
            assert b[0].tokens == g[0].tokens and b[0].frames == g[0].frames
            assert b[0].score == pytest.approx(g[0].score, abs=1e-4)
            assert len({h.tokens for h in b}) == len(b) == beam_size


CIF_MODES = {
    "end slot": dict(end_slot=True),
    "ctc segments": dict(segments="ctc"),
    "plain": {},
}


@pytest.mark.parametrize("mode", list(CIF_MODES))
def test_beam_of_one_with_ctc_weight_zero_equals_greedy_search(mode):
    """With a CTC head, CTC weight 0 and rescoring on (it re-ranks a single hypothesis)."""
    model = make_model(cif=True, ctc=True, cif_options=CIF_MODES[mode], vocab=9)
    enc, enc_lens = encoder_output([21, 13, 8], scale=3.0)
    greedy = build_searcher("cif_greedy", model)(enc, enc_lens)
    cfg = SearchConfig(beam_size=1, ctc_weight=0.0, rescore_weight=0.5)
    beam = build_searcher("cif_beam", model, cfg)(enc, enc_lens)
    assert [b[0].tokens for b in beam] == [g[0].tokens for g in greedy]
    assert [b[0].frames for b in beam] == [g[0].frames for g in greedy]
    assert sum(len(g[0].tokens) for g in greedy) > 5


@pytest.mark.parametrize("mode", list(CIF_MODES))
def test_an_utterance_without_frames_is_not_rescored(mode):
    """No frames: the empty hypothesis with score 0, alone or padded in a batch, rescoring on
    (an end slot's decoder would score its end label attending to no frame, or to padding)."""
    model = make_model(cif=True, ctc=True, cif_options=CIF_MODES[mode])
    enc, enc_lens = encoder_output([9, 0], scale=2.0)
    searcher = build_searcher("cif_beam", model, SearchConfig(beam_size=3, rescore_weight=0.5))
    empty = [Hypothesis(tokens=())]
    assert searcher(enc, enc_lens)[1] == empty
    assert searcher(enc[1:2, :0], enc_lens[1:2]) == [empty]


def _forced(head, logits: torch.Tensor, frames: list[int]):
    """Makes ``head.infer`` return these logits (N, V) for one utterance."""
    out = CIFInference(logits[None], torch.tensor([logits.shape[0]]), torch.tensor([frames]))
    head.infer = lambda enc, enc_lens, blank_penalty=0.0: out


def test_the_end_slot_stops_decoding():
    """Positions say 3 4 <end> 5 2: both searches give (3, 4); the beam's hypotheses that end
    at the end label carry no score of the positions after it."""
    model = make_model(cif=True, cif_options=dict(end_slot=True))
    head = model.heads["cif"]
    probs = torch.full((5, 7), 0.01)
    for position, label in enumerate([3, 4, 1, 5, 2]):
        probs[position, label] = 1.0
    log_probs = torch.log(probs / probs.sum(-1, keepdim=True))
    _forced(head, log_probs, [2, 4, 6, 8, 9])
    enc, enc_lens = encoder_output([10])
    greedy = build_searcher("cif_greedy", model)(enc, enc_lens)[0][0]
    assert greedy.tokens == (3, 4) and greedy.frames == (2, 4)
    assert greedy.score == pytest.approx(float(log_probs[[0, 1, 2], [3, 4, 1]].sum()))
    cfg = SearchConfig(beam_size=4, nbest=4, rescore_weight=0.0)
    beam = build_searcher("cif_beam", model, cfg)(enc, enc_lens)[0]
    assert beam[0].tokens == (3, 4) and beam[0].score == pytest.approx(greedy.score)
    assert all(1 not in hyp.tokens for hyp in beam)
    plain = make_model(cif=True)  # without an end slot the label is a token like the others
    _forced(plain.heads["cif"], log_probs, [2, 4, 6, 8, 9])
    assert build_searcher("cif_greedy", plain)(enc, enc_lens)[0][0].tokens == (3, 4, 1, 5, 2)


def test_rescored_score_is_the_decoders_score_of_the_hypothesis():
    model = make_model(cif=True, ctc=True, cif_options=dict(segments="ctc"), vocab=9)
    head = model.heads["cif"]
    enc, enc_lens = encoder_output([17], scale=3.0)
    greedy = build_searcher("cif_greedy", model)(enc, enc_lens)[0][0]
    cfg = SearchConfig(beam_size=1, ctc_weight=0.0, rescore_weight=0.3)
    best = build_searcher("cif_beam", model, cfg)(enc, enc_lens)[0][0]
    tokens = torch.tensor([greedy.tokens])
    rescored = head.score_tokens(enc, enc_lens, tokens, torch.tensor([tokens.shape[1]]))
    assert best.score == pytest.approx(0.7 * greedy.score + 0.3 * float(rescored), abs=1e-4)


def _enumerate(log_probs: torch.Tensor, lm: NgramLM | None, weight: float) -> dict:
    """Every path over the positions; paths with equal tokens log-add; + weight * LM."""
    acoustic: dict[tuple[int, ...], float] = {}
    for labels in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        tokens = tuple(label for label in labels if label != 0)
        score = sum(float(log_probs[n, label]) for n, label in enumerate(labels))
        acoustic[tokens] = log_add(acoustic[tokens], score) if tokens in acoustic else score
    if lm is None:
        return acoustic
    fused = {}
    for tokens, score in acoustic.items():
        state, lm_score = lm.init_state(), 0.0
        for token in tokens:
            lm_score += lm.log_prob(state, token)
            state = lm.advance(state, token)
        fused[tokens] = score + weight * (lm_score + lm.final_score(state))
    return fused


@pytest.mark.parametrize("weight", [0.0, 0.4, 2.0])
def test_wide_beam_nbest_equals_enumeration_of_every_path(lm, weight):
    """V = 4 (blank + 3 tokens), N = 3 positions: 64 paths, at most 40 prefixes; a beam of 64
    prunes nothing, so its n-best is the enumeration's, scores included."""
    generator = torch.Generator().manual_seed(3)
    log_probs = torch.log_softmax(torch.randn(3, 4, generator=generator) * 1.5, dim=-1)
    log_probs[:, 0] -= 1.0  # blank is rarer, but still a candidate
    expected = _enumerate(log_probs, lm, weight)
    model = make_model(cif=True, vocab=4)
    small_lm = NgramLM(lm.probs, lm.backoffs, vocab_size=4) if weight else None
    search = CifBeamSearch(
        model.heads["cif"], SearchConfig(beam_size=64, nbest=10, lm_weight=weight), small_lm
    )
    hyps = search.search(log_probs, [0, 2, 5])
    ranked = sorted(expected, key=expected.get, reverse=True)[:10]
    assert [h.tokens for h in hyps] == ranked
    assert [h.score for h in hyps] == pytest.approx([expected[t] for t in ranked], abs=1e-5)
    for hyp in hyps:  # each token carries the fire frame of a position, in order
        assert list(hyp.frames) == sorted(hyp.frames) and len(hyp.frames) == len(
            hyp.tokens
        )


def _ctc_log_prob(ctc_log_probs: torch.Tensor, tokens: tuple[int, ...]) -> float:
    loss, _ = ctc_loss(
        ctc_log_probs[None], torch.tensor([ctc_log_probs.shape[0]]),
        torch.tensor([tokens or (0,)]), torch.tensor([len(tokens)]),
    )  # fmt: skip
    return -float(loss[0])


@pytest.mark.parametrize("ctc_weight", [0.3, 0.7])
def test_wide_beam_with_ctc_scores_equals_enumeration(lm, ctc_weight):
    """Every path, plus ``ctc_weight`` times the CTC probability of its labelling (the CTC loss
    of the tokens), with LM fusion; the beam prunes nothing."""
    generator = torch.Generator().manual_seed(5)
    log_probs = torch.log_softmax(torch.randn(3, 4, generator=generator) * 1.5, dim=-1)
    ctc = torch.log_softmax(torch.randn(6, 4, generator=generator) * 2, dim=-1)
    acoustic = _enumerate(log_probs, None, 0.0)
    fused = _enumerate(log_probs, lm and NgramLM(lm.probs, lm.backoffs, vocab_size=4), 0.4)
    expected = {
        tokens: (1 - ctc_weight) * acoustic[tokens] + ctc_weight * _ctc_log_prob(ctc, tokens)
        + (fused[tokens] - acoustic[tokens])
        for tokens in acoustic
    }
    model = make_model(cif=True, ctc=True, vocab=4)
    cfg = SearchConfig(beam_size=64, nbest=10, lm_weight=0.4, ctc_weight=ctc_weight)
    small_lm = NgramLM(lm.probs, lm.backoffs, vocab_size=4)
    search = CifBeamSearch(model.heads["cif"], cfg, small_lm, model.heads["ctc"])
    hyps = search.search(log_probs, [0, 2, 5], ctc[None])
    ranked = sorted(expected, key=expected.get, reverse=True)[:10]
    assert [h.tokens for h in hyps] == ranked
    assert [h.score for h in hyps] == pytest.approx([expected[t] for t in ranked], abs=1e-4)


def test_lm_flips_a_close_call_and_weight_zero_changes_nothing(lm):
    """Position 2 slightly prefers 4 over 3; the LM strongly prefers 3 after 2."""
    probs = torch.full((2, 7), 1e-4)
    probs[0, 2] = 1.0
    probs[1, 4], probs[1, 3] = 0.5, 0.45
    log_probs = torch.log(probs / probs.sum(-1, keepdim=True))
    head = make_model(cif=True).heads["cif"]
    plain = CifBeamSearch(head, SearchConfig(beam_size=4)).search(log_probs, [1, 3])
    unfused = CifBeamSearch(head, SearchConfig(beam_size=4), lm).search(log_probs, [1, 3])
    fused = CifBeamSearch(head, SearchConfig(beam_size=4, lm_weight=0.5), lm).search(
        log_probs, [1, 3]
    )
    assert plain == unfused and plain[0].tokens == (2, 4)
    assert fused[0].tokens == (2, 3) and fused[0].frames == (1, 3)
    assert not math.isclose(fused[0].score, plain[0].score)


def test_lm_path_is_read_and_its_vocabulary_checked(lm, tmp_path):
    path = tmp_path / "lm.arpa"
    path.write_text(ARPA)
    model = make_model(cif=True)
    enc, enc_lens = encoder_output([10])
    cfg = SearchConfig(beam_size=3, lm_weight=0.5, lm_path=path)
    assert build_searcher("cif_beam", model, cfg)(enc, enc_lens) == build_searcher(
        "cif_beam", model, cfg, lm=lm
    )(enc, enc_lens)
    with pytest.raises(ValueError, match="LM vocabulary 7 differs from the CIF head's 9"):
        build_searcher("cif_beam", make_model(cif=True, vocab=9), cfg, lm=lm)


def _one_hot_log_probs(rows: list[dict[int, float]], vocab: int) -> torch.Tensor:
    """(N, V) log-probabilities: each row's listed labels with their weights, the rest 1e-4."""
    probs = torch.full((len(rows), vocab), 1e-4)
    for position, row in enumerate(rows):
        for label, weight in row.items():
            probs[position, label] = weight
    return torch.log(probs / probs.sum(-1, keepdim=True))


@pytest.mark.parametrize("end_slot", [False, True])
def test_blank_and_the_end_label_take_no_lm_term_when_the_labels_are_chosen(lm, end_slot):
    """Beam 1 expands one label: blank (or the end label) at 0.5 beats token 2 at 0.4 whatever
    the LM says of label 0 or 1 (its <unk> log-probability if it were scored)."""
    label = 1 if end_slot else 0
    model = make_model(cif=True, cif_options=dict(end_slot=True) if end_slot else None, vocab=7)
    log_probs = _one_hot_log_probs([{label: 0.5, 2: 0.4}, {0: 1.0}], vocab=7)
    cfg = SearchConfig(beam_size=1, lm_weight=1.0)
    best = CifBeamSearch(model.heads["cif"], cfg, lm).search(log_probs, [1, 3])[0]
    assert best.tokens == ()


def test_the_merged_path_keeps_the_frames_of_the_more_probable_one():
    """(2, blank) at 0.6 * 0.65 and (blank, 2) at 0.4 * 0.35 both give (2,): its frame is the
    first position's, whichever path the beam meets first."""
    head = make_model(cif=True, vocab=4).heads["cif"]
    for first, second in (({2: 0.6, 0: 0.4}, {0: 0.65, 2: 0.35}),
                          ({2: 0.4, 0: 0.6}, {0: 0.35, 2: 0.65})):  # fmt: skip
        log_probs = _one_hot_log_probs([first, second], vocab=4)
        hyps = CifBeamSearch(head, SearchConfig(beam_size=8, nbest=8)).search(log_probs, [1, 3])
        (single,) = [h for h in hyps if h.tokens == (2,)]
        assert single.frames == ((1,) if first[2] > second[2] else (3,))


def test_hypotheses_the_lm_forbids_are_dropped_while_others_remain(lm):
    """An LM without <unk> (-inf for token 1): of the 4 one-position hypotheses, the 3 it allows
    are the n-best, none with token 1 or a -inf score."""
    probs = {gram: value for gram, value in lm.probs.items() if gram != (UNK,)}
    forbids = NgramLM(probs, lm.backoffs, vocab_size=4, oov_log_prob=-math.inf)
    log_probs = _one_hot_log_probs([{1: 0.5, 2: 0.2, 3: 0.2, 0: 0.1}], vocab=4)
    head = make_model(cif=True, vocab=4).heads["cif"]
    cfg = SearchConfig(beam_size=4, nbest=4, lm_weight=0.5)
    hyps = CifBeamSearch(head, cfg, forbids).search(log_probs, [1])
    assert sorted(h.tokens for h in hyps) == [(), (2,), (3,)]
    assert all(math.isfinite(h.score) for h in hyps)


def test_ctc_pre_beam_widens_the_labels_a_hypothesis_is_expanded_by():
    """Beam 1 with ctc_pre_beam 2 expands the two best labels: CTC, sure of 3, picks the
    acoustically second label over the first."""
    model = make_model(cif=True, ctc=True, vocab=4)
    log_probs = _one_hot_log_probs([{2: 0.55, 3: 0.45}], vocab=4)
    ctc = _one_hot_log_probs([{3: 1.0}, {0: 1.0}, {0: 1.0}], vocab=4)
    cfg = SearchConfig(beam_size=1, ctc_weight=0.5, ctc_pre_beam=2.0)
    search = CifBeamSearch(model.heads["cif"], cfg, ctc_head=model.heads["ctc"])
    assert search.search(log_probs, [1], ctc[None])[0].tokens == (3,)


def test_an_ended_hypothesis_competes_with_the_ctc_score_of_its_whole_labelling():
    """Positions 2, then <end> (0.55) or 3 (0.45); CTC says "2 3". Ended, (2,) is ranked by the
    CTC probability of the whole labelling "2" (tiny), not of its prefix, so a beam of 1 keeps
    (2, 3)."""
    model = make_model(cif=True, ctc=True, cif_options=dict(end_slot=True), vocab=5)
    log_probs = _one_hot_log_probs([{2: 1.0}, {1: 0.55, 3: 0.45}], vocab=5)
    ctc = _one_hot_log_probs([{2: 1.0}, {2: 1.0}, {3: 1.0}, {3: 1.0}], vocab=5)
    cfg = SearchConfig(beam_size=1, ctc_weight=0.5, ctc_pre_beam=2.0)
    search = CifBeamSearch(model.heads["cif"], cfg, ctc_head=model.heads["ctc"])
    assert search.search(log_probs, [1, 3], ctc[None])[0].tokens == (2, 3)


def _enumerate_ended(log_probs: torch.Tensor, end_id: int) -> dict:
    """Every path; a path's tokens stop at its first end label (the positions after it sum to
    probability 1 whatever their labels); equal token sequences log-add."""
    acoustic: dict[tuple[int, ...], float] = {}
    for labels in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        stop = labels.index(end_id) if end_id in labels else len(labels)
        if any(label != 0 for label in labels[stop + 1 :]):
            continue  # count each ended prefix once: later positions all blank
        tokens = tuple(label for label in labels[:stop] if label != 0)
        score = sum(float(log_probs[n, label]) for n, label in enumerate(labels[: stop + 1]))
        acoustic[tokens] = log_add(acoustic[tokens], score) if tokens in acoustic else score
    return acoustic


def test_wide_beam_with_an_end_slot_equals_enumeration():
    """V = 5 (blank, end, 3 tokens), N = 3: a sequence's probability sums the paths that give it
    without ending and those that end after it (ended and unended hypotheses log-add)."""
    generator = torch.Generator().manual_seed(7)
    log_probs = torch.log_softmax(torch.randn(3, 5, generator=generator), dim=-1)
    expected = _enumerate_ended(log_probs, end_id=1)
    head = make_model(cif=True, cif_options=dict(end_slot=True), vocab=5).heads["cif"]
    hyps = CifBeamSearch(head, SearchConfig(beam_size=200, nbest=12)).search(log_probs, [0, 2, 5])
    ranked = sorted(expected, key=expected.get, reverse=True)[:12]
    assert [h.tokens for h in hyps] == ranked
    assert [h.score for h in hyps] == pytest.approx([expected[t] for t in ranked], abs=1e-5)
