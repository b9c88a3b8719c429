"""CTC searchers: prefix beam == exhaustive search, greedy == beam 1 on peaky posteriors,
best-path timestamps."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import pytest
import torch
from search_helpers import ENC_DIM, encoder_output, make_model

from asr.decoding import SearchConfig, build_searcher
from asr.decoding.ctc_greedy import ctc_log_probs
from asr.decoding.ctc_prefix_beam import CtcPrefixBeamSearch


def exhaustive_labelling_log_probs(log_probs: torch.Tensor, blank: int = 0) -> dict:
    """log P(labelling) for every labelling, by summing all V^T alignments."""
    num_frames, vocab = log_probs.shape
    totals: dict[tuple[int, ...], float] = defaultdict(lambda: -math.inf)
    for path in itertools.product(range(vocab), repeat=num_frames):
        score = sum(float(log_probs[t, s]) for t, s in enumerate(path))
        labels = tuple(s for i, s in enumerate(path) if s != blank and (i == 0 or path[i - 1] != s))
        totals[labels] = float(torch.logaddexp(torch.tensor(totals[labels]), torch.tensor(score)))
    return dict(totals)


def viterbi_frames(log_probs: torch.Tensor, blank: int = 0) -> dict:
    """Per labelling the token frames (first frame of each token's run) of its most probable
    alignment, by enumerating all V^T alignments."""
    num_frames, vocab = log_probs.shape
    best: dict[tuple[int, ...], tuple[float, tuple[int, ...]]] = {}
    for path in itertools.product(range(vocab), repeat=num_frames):
        score = sum(float(log_probs[t, s]) for t, s in enumerate(path))
        starts = [i for i, s in enumerate(path) if s != blank and (i == 0 or path[i - 1] != s)]
        labels = tuple(path[i] for i in starts)
        if labels not in best or score > best[labels][0]:
            best[labels] = (score, tuple(starts))
    return {labels: frames for labels, (_, frames) in best.items()}


def peaky_model_and_output(labels: list[list[int]], vocab: int = 7, sharpness: float = 12.0):
    """A CTC head whose log-probs put > 0.9 on ``labels[b][t]`` (one-hot encoder output)."""
    model = make_model(ctc=True, vocab=vocab)
    head = model.heads["ctc"]
    with torch.no_grad():
        head.output.weight.zero_()
        head.output.bias.zero_()
        head.output.weight[:, :vocab] = sharpness * torch.eye(vocab)
    lens = [len(row) for row in labels]
    enc = torch.zeros(len(labels), max(lens), ENC_DIM)
    for b, row in enumerate(labels):
        enc[b, torch.arange(len(row)), torch.tensor(row)] = 1.0
    enc = enc + 0.05 * torch.randn_like(enc)
    return model, enc, torch.tensor(lens)


def test_prefix_beam_equals_exhaustive_search():
    """Beam 64 >= all 63 prefixes of <= 5 tokens over 2 labels: the search is exact."""
    model = make_model(ctc=True, vocab=3)
    enc, enc_lens = encoder_output([5], scale=2.0)
    searcher = build_searcher("ctc_prefix_beam", model, SearchConfig(beam_size=64, nbest=8))
    nbest = searcher(enc, enc_lens)[0]
    with torch.no_grad():
        log_probs = ctc_log_probs(model.heads["ctc"], enc)[0]
    exact = sorted(exhaustive_labelling_log_probs(log_probs).items(), key=lambda kv: -kv[1])
    assert [h.tokens for h in nbest] == [labels for labels, _ in exact[:8]]
    assert [h.score for h in nbest] == pytest.approx([score for _, score in exact[:8]], abs=1e-5)


def test_a_beam_of_exactly_every_labelling_keeps_them_all():
    """5 frames, 2 labels: 25 labellings have a path (a repeated label needs a blank between).
    A beam of exactly 25 never prunes (every prefix on a frame is one of them), so its n-best of
    25 is every labelling with its exact probability; one place fewer loses one."""
    model = make_model(ctc=True, vocab=3)
    enc, enc_lens = encoder_output([5], scale=2.0)
    with torch.no_grad():
        log_probs = ctc_log_probs(model.heads["ctc"], enc)[0]
    exact = exhaustive_labelling_log_probs(log_probs)
    assert len(exact) == 25
    cfg = SearchConfig(beam_size=25, nbest=25)
    nbest = build_searcher("ctc_prefix_beam", model, cfg)(enc, enc_lens)[0]
    assert {h.tokens: h.score for h in nbest} == pytest.approx(exact, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 4])
def test_prefix_beam_timestamps_are_those_of_the_most_probable_alignment(seed):
    """Unpruned (beam 64 over 2 labels and 6 frames): every hypothesis' frames are where its
    most probable alignment starts each token, by enumeration (not the frames of whichever
    summed contribution was largest)."""
    model = make_model(ctc=True, vocab=3, seed=seed)
    enc, enc_lens = encoder_output([6], seed=seed, scale=2.0)
    nbest = build_searcher("ctc_prefix_beam", model, SearchConfig(beam_size=64, nbest=16))(
        enc, enc_lens
    )[0]
    with torch.no_grad():
        log_probs = ctc_log_probs(model.heads["ctc"], enc)[0]
    best = viterbi_frames(log_probs)
    assert [h.frames for h in nbest] == [best[h.tokens] for h in nbest]


def test_pruned_prefix_beam_scores_are_lower_bounds_of_the_ctc_probability():
    """Pruned prefixes' alignments are lost, never invented: score <= log P_ctc(labelling)."""
    model = make_model(ctc=True)
    enc, enc_lens = encoder_output([8, 6])
    nbests = build_searcher("ctc_prefix_beam", model, SearchConfig(beam_size=4, nbest=4))(
        enc, enc_lens
    )
    with torch.no_grad():
        log_probs = ctc_log_probs(model.heads["ctc"], enc)
    for b, hyps in enumerate(nbests):
        for hyp in hyps:
            nll = torch.nn.functional.ctc_loss(
                log_probs[b, : enc_lens[b]],
                torch.tensor(hyp.tokens, dtype=torch.long),
                enc_lens[b : b + 1],
                torch.tensor([len(hyp.tokens)]),
                reduction="sum",
            )
            assert hyp.score <= -float(nll) + 1e-4


def test_greedy_collapses_repeats_and_stamps_the_first_frame_of_each_run():
    blank = 0
    model, enc, enc_lens = peaky_model_and_output([[3, 3, blank, 5, 5, 3, blank, blank, 3]])
    hyp = build_searcher("ctc_greedy", model)(enc, enc_lens)[0][0]
    assert hyp.tokens == (3, 5, 3, 3)
    assert hyp.frames == (0, 3, 5, 8)


def test_greedy_equals_prefix_beam_of_one_on_peaky_posteriors():
    """Prefix search ranks labellings, greedy ranks paths; with one label above 0.9 on every
    frame (as after training) beam 1 and greedy agree (tokens and timestamps)."""
    generator = torch.Generator().manual_seed(3)
    labels = [torch.randint(0, 7, (n,), generator=generator).tolist() for n in (20, 13, 17)]
    model, enc, enc_lens = peaky_model_and_output(labels)
    with torch.no_grad():
        log_probs = ctc_log_probs(model.heads["ctc"], enc)
    valid = torch.arange(enc.shape[1])[None] < enc_lens[:, None]
    assert bool((log_probs.max(-1).values.exp() > 0.9)[valid].all())  # the precondition
    greedy = build_searcher("ctc_greedy", model)(enc, enc_lens)
    beam = build_searcher("ctc_prefix_beam", model, SearchConfig(beam_size=1))(enc, enc_lens)
    for g, p in zip(greedy, beam):
        assert g[0].tokens == p[0].tokens and g[0].frames == p[0].frames
        assert g[0].score <= p[0].score + 1e-6  # one path <= all paths of the labelling


def test_blank_penalty_emits_more_tokens():
    model = make_model(ctc=True)
    enc, enc_lens = encoder_output([30])
    plain = build_searcher("ctc_greedy", model)(enc, enc_lens)[0][0]
    penalised = build_searcher("ctc_greedy", model, SearchConfig(blank_penalty=5.0))(enc, enc_lens)
    assert len(penalised[0][0].tokens) >= len(plain.tokens)


@pytest.mark.parametrize("bonus, norm", [(1.5, 0.0), (0.0, 1.0), (0.8, 0.5)])
def test_prefix_beam_bonus_and_length_norm_rank_the_exact_probabilities(bonus, norm):
    """Unpruned (beam 64 >= all 63 prefixes): the n-best is every labelling ranked by
    ``(log P_ctc + bonus * L) / (L + 1) ** norm`` of its exact probability, with that score;
    the options change the n-best."""
    model = make_model(ctc=True, vocab=3)
    enc, enc_lens = encoder_output([5], scale=2.0)
    cfg = SearchConfig(beam_size=64, nbest=8, insertion_bonus=bonus, length_norm=norm)
    nbest = build_searcher("ctc_prefix_beam", model, cfg)(enc, enc_lens)[0]
    with torch.no_grad():
        log_probs = ctc_log_probs(model.heads["ctc"], enc)[0]
    exact = exhaustive_labelling_log_probs(log_probs)
    ranked = {
        labels: (score + bonus * len(labels)) / (len(labels) + 1) ** norm
        for labels, score in exact.items()
    }
    best = sorted(ranked.items(), key=lambda kv: -kv[1])[:8]
    assert [labels for labels, _ in best] != sorted(exact, key=exact.get, reverse=True)[:8]
    assert [h.tokens for h in nbest] == [labels for labels, _ in best]
    assert [h.score for h in nbest] == pytest.approx([score for _, score in best], abs=1e-5)


class FirstTokensForbiddenLM:
    """A token LM that forbids tokens 1 and 2 (-inf, as a word LM forbids spellings outside its
    lexicon) and is uniform over the other four, ending anywhere."""

    vocab_size = 7

    def init_state(self) -> tuple:
        return ()

    def score(self, state: tuple) -> torch.Tensor:
        scores = torch.full((self.vocab_size,), math.log(1 / 4))
        scores[[1, 2]] = -math.inf
        return scores

    def advance(self, state: tuple, token: int) -> tuple:
        return ()

    def final_score(self, state: tuple) -> float:
        return 0.0


def test_a_frame_whose_candidates_the_lm_all_forbids_still_counts_in_every_score():
    """On both frames the two most likely labels (the beam of 2 expands those) are 1 and 2,
    which the LM forbids: the frame is expanded by its other labels, blank among them, so every
    hypothesis' score is its exact CTC probability (enumeration) plus the weighted LM score,
    not that of the frames left (the empty prefix scored 0: probability 1)."""
    model = make_model(ctc=True)
    probs = torch.tensor([0.1, 0.4, 0.4, 0.02, 0.02, 0.035, 0.025])
    log_probs = probs.log().expand(2, -1)
    exact = exhaustive_labelling_log_probs(log_probs)
    cfg = SearchConfig(beam_size=2, nbest=2, lm_weight=0.5)
    searcher = CtcPrefixBeamSearch(model.heads["ctc"], cfg, FirstTokensForbiddenLM())
    nbest = searcher.search(log_probs)
    assert [h.tokens for h in nbest] == [(), (5,)]
    for hyp in nbest:
        expected = exact[hyp.tokens] + 0.5 * len(hyp.tokens) * math.log(1 / 4)
        assert hyp.score == pytest.approx(expected, abs=1e-5), hyp.tokens


class CountingForbiddingLM(FirstTokensForbiddenLM):
    """:class:`FirstTokensForbiddenLM` that records the labels it is advanced by."""

    def __init__(self) -> None:
        self.advanced: list[int] = []

    def advance(self, state: tuple, token: int) -> tuple:
        self.advanced.append(token)
        return ()


def test_the_frame_retry_extends_prefixes_only_by_labels_that_can_keep_one():
    """The retry of a frame whose candidates the LM all forbids extended every prefix by every
    label, the forbidden ones again (V per prefix: a word LM forbids most of a BPE vocabulary).
    It now takes only blank, the prefixes' last tokens and the labels the LM allows, which
    keeps the same prefixes: the LM is advanced by the forbidden labels 1 and 2 once per prefix
    and frame (the beam's own candidates), not a second time in the retry; the n-best is that
    of the test above."""
    model = make_model(ctc=True)
    probs = torch.tensor([0.1, 0.4, 0.4, 0.02, 0.02, 0.035, 0.025])
    lm = CountingForbiddingLM()
    cfg = SearchConfig(beam_size=2, nbest=2, lm_weight=0.5)
    nbest = CtcPrefixBeamSearch(model.heads["ctc"], cfg, lm).search(probs.log().expand(2, -1))
    assert [h.tokens for h in nbest] == [(), (5,)]
    prefixes_per_frame = [1, 2]  # () on frame 0; () and (5,) on frame 1
    assert sum(label in (1, 2) for label in lm.advanced) == 2 * sum(prefixes_per_frame)
