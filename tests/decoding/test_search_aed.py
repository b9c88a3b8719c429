"""AED beam search: beam 1 == greedy argmax decoding, CTC prefix scores == alignment
enumeration, joint decoding with ctc_weight 1 scores labellings by their CTC probability."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from search_helpers import ENC_DIM, VOCAB, encoder_output, make_model

from asr.decoding import SearchConfig, build_searcher
from asr.decoding.aed_beam import AedBeamSearch, length_normalised
from asr.decoding.ctc_greedy import ctc_log_probs
from asr.decoding.ctc_prefix_score import CtcPrefixScorer
from asr.heads.aed import AEDConfig, AEDHead
from asr.heads.decoder_layers import lengths_to_mask
from asr.model import ASRModel
from asr.types import Hypothesis

EOS = 1


def greedy_argmax(head, enc, length: int) -> tuple[int, ...]:
    """Reference: feed sos, take the argmax (never blank), stop at eos or after ``length``."""
    cache = head.init_cache(1, enc.device)
    mask = lengths_to_mask(torch.tensor([length]), enc.shape[0])
    last, tokens = torch.tensor([head.cfg.sos_id]), []
    with torch.no_grad():
        for _ in range(max(length, 1)):
            log_probs, cache = head.step(last, cache, enc[None], mask)
            log_probs[0, 0] = -math.inf
            token = int(log_probs[0].argmax())
            if token == head.cfg.eos_id:
                break
            tokens.append(token)
            last = torch.tensor([token])
    return tuple(tokens)


def test_beam_of_one_equals_greedy_argmax_decoding():
    model = make_model(aed=True, ctc=True)
    enc, enc_lens = encoder_output([9, 5, 12])
    cfg = SearchConfig(beam_size=1, ctc_weight=0.0)
    hyps = build_searcher("aed_beam", model, cfg)(enc, enc_lens)
    for b, length in enumerate(enc_lens.tolist()):
        assert hyps[b][0].tokens == greedy_argmax(model.heads["aed"], enc[b], length)
    assert any(len(h[0].tokens) > 1 for h in hyps)


def brute_force_prefix(log_probs: torch.Tensor, prefix: tuple[int, ...], complete: bool) -> float:
    """log P(labelling starts with prefix) (or == prefix) over all alignments; blank = 0."""
    frames, vocab = log_probs.shape
    total = -math.inf
    for path in itertools.product(range(vocab), repeat=frames):
        labels = tuple(s for i, s in enumerate(path) if s != 0 and (i == 0 or path[i - 1] != s))
        if labels == prefix or (not complete and labels[: len(prefix)] == prefix):
            score = sum(float(log_probs[t, s]) for t, s in enumerate(path))
            total = float(torch.logaddexp(torch.tensor(total), torch.tensor(score)))
    return total


def test_ctc_prefix_scores_equal_alignment_enumeration():
    """Prefixes (), (2,), (2, 2) (a repeat), (2, 2, 3); padded frames must not change scores:
    utterance 1 has 4 of 5 frames."""
    torch.manual_seed(2)
    log_probs = torch.log_softmax(torch.randn(2, 5, 4) * 1.5, dim=-1)  # blank 0, eos 1
    lens = torch.tensor([5, 4])
    scorer = CtcPrefixScorer(log_probs, lens, blank_id=0, eos_id=EOS)
    state = scorer.init_state(torch.tensor([0, 1]))
    candidates = torch.tensor([[2, 3, EOS], [2, 3, EOS]])
    prefix: tuple[int, ...] = ()
    for next_token in (2, 2, 3, None):
        psi, r = scorer.score(state, candidates)
        for b in range(2):
            lp = log_probs[b, : lens[b]]
            for column, token in enumerate(candidates[b].tolist()):
                if token == EOS:
                    expect = brute_force_prefix(lp, prefix, complete=True)
                else:
                    expect = brute_force_prefix(lp, prefix + (token,), complete=False)
                assert float(psi[b, column]) == pytest.approx(expect, abs=1e-4), (b, prefix, token)
        if next_token is None:
            break
        column = torch.full((2,), [2, 3].index(next_token))
        tokens = torch.full((2,), next_token)
        state = scorer.advance(state, psi, r, torch.tensor([0, 1]), column, tokens)
        prefix += (next_token,)


def test_ctc_weight_one_scores_finished_hypotheses_by_their_ctc_probability():
    model = make_model(aed=True, ctc=True)
    enc, enc_lens = encoder_output([7, 5])
    cfg = SearchConfig(beam_size=3, nbest=3, ctc_weight=1.0)
    nbests = build_searcher("aed_beam", model, cfg)(enc, enc_lens)
    with torch.no_grad():
        log_probs = ctc_log_probs(model.heads["ctc"], enc)
    for b, hyps in enumerate(nbests):
        for hyp in hyps:
            nll = F.ctc_loss(
                log_probs[b, : enc_lens[b]],
                torch.tensor(hyp.tokens, dtype=torch.long),
                enc_lens[b : b + 1],
                torch.tensor([len(hyp.tokens)]),
                reduction="sum",
            )
            assert hyp.score == pytest.approx(-float(nll), abs=1e-4)


def test_joint_decoding_changes_with_the_ctc_weight():
    model = make_model(aed=True, ctc=True)
    enc, enc_lens = encoder_output([10, 8, 9, 6])
    results = {
        weight: [
            h[0].tokens
            for h in build_searcher(
                "aed_beam", model, SearchConfig(beam_size=3, ctc_weight=weight)
            )(enc, enc_lens)
        ]
        for weight in (0.0, 1.0)
    }
    assert results[0.0] != results[1.0]


def test_length_normalisation():
    assert length_normalised(-6.0, 5, 0.0) == -6.0
    assert length_normalised(-6.0, 1, 1.0) == pytest.approx(-6.0 / (7 / 6))
    model = make_model(aed=True)
    enc, enc_lens = encoder_output([10])
    plain = build_searcher("aed_beam", model, SearchConfig(beam_size=4, nbest=4))(enc, enc_lens)[0]
    normed = build_searcher(
        "aed_beam", model, SearchConfig(beam_size=4, nbest=4, length_penalty=1.0)
    )(enc, enc_lens)[0]
    assert {h.tokens for h in plain} == {h.tokens for h in normed}  # same search, other ranking
    for hyp in normed:
        raw = next(p.score for p in plain if p.tokens == hyp.tokens)
        assert hyp.score == pytest.approx(length_normalised(raw, len(hyp.tokens), 1.0), abs=1e-5)


def test_forced_end_at_the_length_limit_with_ctc_weight_one():
    """At enc_len tokens only <eos> is allowed, also when the attention weight is 0."""
    model = make_model(aed=True, ctc=True)
    with torch.no_grad():
        model.heads["aed"].decoder.output.bias[EOS] = -50.0  # the decoder never wants to end
    enc, enc_lens = encoder_output([3, 2])
    for weight in (0.0, 0.5, 1.0):
        cfg = SearchConfig(beam_size=2, nbest=2, ctc_weight=weight)
        for hyps, length in zip(build_searcher("aed_beam", model, cfg)(enc, enc_lens), [3, 2]):
            assert len(hyps) == 2  # two hypotheses finished by the forced <eos>
            assert all(len(h.tokens) <= length and math.isfinite(h.score) for h in hyps)


def test_step_with_precomputed_memory_equals_step():
    head = make_model(aed=True).heads["aed"]
    enc, enc_lens = encoder_output([6, 4])
    mask = lengths_to_mask(enc_lens, enc.shape[1])
    memory = head.precompute_memory(enc)
    tokens = torch.tensor([[1, 5, 3], [1, 2, 2]])
    cache_a = cache_b = head.init_cache(2, "cpu")
    with torch.no_grad():
        for u in range(3):
            plain, cache_a = head.step(tokens[:, u], cache_a, enc, mask)
            fast, cache_b = head.step(tokens[:, u], cache_b, enc, mask, memory)
            torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("ctc_weight", "length_penalty"), [(0.0, 0.0), (0.4, 1.0), (1.0, 0.5)])
def test_a_beam_of_every_hypothesis_is_the_exhaustive_search(ctc_weight, length_penalty):
    """A beam as wide as the hypothesis space (the 1 + 5 + 25 labellings of at most 2 tokens
    of 2 frames) prunes nothing: the n-best is every labelling, each scored by
    ``(1 - w) * log P_att + w * log P_ctc`` of the whole labelling (teacher forcing with
    ``<eos>``, and the CTC loss) and length normalised, ranked by that score. Utterance 1, of one
    frame, ends after one token; padding must not change utterance 0."""
    model = make_model(aed=True, ctc=True)
    enc, enc_lens = encoder_output([2, 1], seed=3)
    tokens = range(2, VOCAB)
    space = [()] + [(a,) for a in tokens] + list(itertools.product(tokens, repeat=2))
    cfg = SearchConfig(beam_size=len(space), nbest=len(space), ctc_weight=ctc_weight,
                       length_penalty=length_penalty)
    nbests = build_searcher("aed_beam", model, cfg)(enc, enc_lens)
    with torch.no_grad():
        log_probs = ctc_log_probs(model.heads["ctc"], enc)
    for b, hyps in enumerate(nbests):
        length = int(enc_lens[b])
        labellings = [h for h in space if len(h) <= length]
        with torch.no_grad():
            att = model.heads["aed"].score_sequences(enc[b: b + 1], enc_lens[b: b + 1], labellings)
        expected = []
        for labelling, joint in zip(labellings, att.tolist()):
            if ctc_weight > 0:  # (4, 4) has no CTC path on 2 frames: it is not in the n-best
                ctc = -float(F.ctc_loss(log_probs[b, :length],
                                        torch.tensor(labelling, dtype=torch.long),
                                        torch.tensor([length]), torch.tensor([len(labelling)]),
                                        reduction="sum"))
                if ctc == -math.inf:
                    continue
                joint = (1 - ctc_weight) * joint + ctc_weight * ctc
            expected.append((length_normalised(joint, len(labelling), length_penalty), labelling))
        expected.sort(reverse=True)
        assert [h.tokens for h in hyps] == [tokens for _, tokens in expected]
        assert [h.score for h in hyps] == pytest.approx([s for s, _ in expected], abs=1e-4)


def reference_beam(head, enc, length: int, beam: int, alpha: float
                   ) -> tuple[list[tuple[float, tuple]], bool]:
    """The module doc's beam search for one utterance, hypothesis by hypothesis: each step
    walks the continuations of the live hypotheses best first, ``<eos>`` ones join the
    finished list and the others the new beam until it holds ``beam``; the search stops once
    ``beam`` have finished (or none is live); at ``length`` tokens only ``<eos>``; never blank,
    nor a start symbol of its own. Returns the finished (normalised score, tokens), best
    first, and whether the search stopped before the length limit."""
    mask = lengths_to_mask(torch.tensor([length]), enc.shape[0])
    sos, eos = head.cfg.sos_id, head.cfg.eos_id

    def next_log_probs(prefix: tuple[int, ...]) -> torch.Tensor:
        cache = head.init_cache(1, enc.device)
        for token in (sos, *prefix):
            log_probs, cache = head.step(torch.tensor([token]), cache, enc[None], mask)
        return log_probs[0]

    live, finished = [((), 0.0)], []
    for step in range(length + 1):
        continuations = []
        for prefix, score in live:
            log_probs = next_log_probs(prefix)
            allowed = [eos] if step >= length else [
                t for t in range(1, log_probs.shape[0]) if t == eos or t != sos]
            continuations += [(score + float(log_probs[t]), prefix, t) for t in allowed]
        live = []
        for value, prefix, token in sorted(continuations, key=lambda c: c[0], reverse=True):
            if len(live) == beam:
                break
            if token == eos:
                finished.append((length_normalised(value, len(prefix), alpha), prefix))
            else:
                live.append((prefix + (token,), value))
        if len(finished) >= beam or not live:
            break
    return sorted(finished, key=lambda item: item[0], reverse=True), step < length


@pytest.mark.parametrize(("beam", "nbest", "alpha", "eos_bias", "sos"), [
    (3, 3, 1.0, 0.0, EOS), (4, 2, 0.0, 2.0, EOS), (2, 2, 2.0, 1.0, EOS), (3, 3, 0.5, 1.0, 6)])
def test_batched_beam_search_is_the_documented_search_of_each_utterance(
        beam, nbest, alpha, eos_bias, sos):
    """The batched search (rows of several utterances, early-finished ones padded) returns for
    each utterance the ``nbest`` best finished hypotheses of the one-utterance reference, with
    their normalised scores: with an ``<eos>`` likely enough that ``beam`` hypotheses finish
    before the length limit, and with a start symbol apart from ``<eos>`` (made likely: it is
    never a token)."""
    torch.manual_seed(1)
    head = AEDHead(AEDConfig(d_model=16, num_heads=2, num_layers=2, ffn_dim=32, dropout=0.0,
                             sos_id=sos, eos_id=EOS), ENC_DIM, VOCAB).eval()
    with torch.no_grad():
        head.decoder.output.bias[EOS] += eos_bias
        head.decoder.output.bias[sos] += 3.0 if sos != EOS else 0.0
    model = ASRModel(torch.nn.Identity(), {"aed": head}, {"aed": 1.0}).eval()
    enc, enc_lens = encoder_output([7, 3, 5, 1], seed=5)
    cfg = SearchConfig(beam_size=beam, nbest=nbest, length_penalty=alpha)
    nbests = build_searcher("aed_beam", model, cfg)(enc, enc_lens)
    early = False
    for b, hyps in enumerate(nbests):
        with torch.no_grad():
            finished, stopped = reference_beam(head, enc[b], int(enc_lens[b]), beam, alpha)
        early |= stopped
        expected = finished[:nbest]
        assert [h.tokens for h in hyps] == [tokens for _, tokens in expected], b
        assert [h.score for h in hyps] == pytest.approx([s for s, _ in expected], abs=1e-4)
    assert any(len(h.tokens) > 1 for hyps in nbests for h in hyps) or eos_bias
    assert early or not eos_bias  # the search stopped before the limit somewhere


def test_the_ctc_pre_beam_is_the_attention_candidates_that_get_a_ctc_score():
    """With ctc_weight 1 the attention only chooses the candidates: a pre-beam of one
    (``ceil(1.0 * 1)``) leaves each step the attention's best token, so beam 1 follows the
    attention's greedy search (here ``<eos>`` at once: its bias is raised), scored by CTC; one
    as wide as the vocabulary leaves every token, so beam 1 takes at each step the
    continuation of highest CTC prefix probability (or ends where the labelling itself is
    likelier), by alignment enumeration."""
    model = make_model(aed=True, ctc=True)
    with torch.no_grad():
        model.heads["aed"].decoder.output.bias[EOS] += 1.0
    enc, enc_lens = encoder_output([3], seed=2)
    with torch.no_grad():
        log_probs = ctc_log_probs(model.heads["ctc"], enc)[0]
    prefix: tuple[int, ...] = ()
    for _ in range(4):
        options = [(brute_force_prefix(log_probs, prefix, complete=True), None)]
        if len(prefix) < 3:
            options += [(brute_force_prefix(log_probs, prefix + (t,), complete=False), t)
                        for t in range(2, VOCAB)]
        token = max(options, key=lambda option: option[0])[1]
        if token is None:
            break
        prefix += (token,)
    wide = SearchConfig(beam_size=1, ctc_weight=1.0, ctc_pre_beam=float(VOCAB))
    assert build_searcher("aed_beam", model, wide)(enc, enc_lens)[0][0].tokens == prefix != ()
    narrow = SearchConfig(beam_size=1, ctc_weight=1.0, ctc_pre_beam=1.0)
    hyp = build_searcher("aed_beam", model, narrow)(enc, enc_lens)[0][0]
    assert hyp.tokens == greedy_argmax(model.heads["aed"], enc[0], 3) == ()
    assert hyp.score == pytest.approx(brute_force_prefix(log_probs, (), complete=True), abs=1e-4)


@pytest.mark.parametrize("ctc_weight", [0.0, 0.5])
def test_an_utterance_without_frames_is_the_empty_hypothesis_in_any_batch(ctc_weight):
    """An utterance of no frames is not searched (its decoder would attend to padding only):
    batched with others it is the empty hypothesis of score 0, and they are searched as
    alone; a batch of no frames at all gives every utterance that hypothesis."""
    model = make_model(aed=True, ctc=True)
    enc, enc_lens = encoder_output([5, 0, 3])
    searcher = build_searcher("aed_beam", model, SearchConfig(beam_size=3, nbest=2,
                                                              ctc_weight=ctc_weight))
    nbests = searcher(enc, enc_lens)
    assert nbests[1] == [Hypothesis(tokens=())]
    for b in (0, 2):
        alone = searcher(enc[b: b + 1, : int(enc_lens[b])], enc_lens[b: b + 1])[0]
        assert [h.tokens for h in nbests[b]] == [h.tokens for h in alone]
        assert [h.score for h in nbests[b]] == pytest.approx([h.score for h in alone], abs=1e-5)
    empty = searcher(enc[:, :0], torch.zeros(3, dtype=torch.long))
    assert empty == [[Hypothesis(tokens=())]] * 3


def test_a_search_in_which_no_hypothesis_can_end_gives_score_minus_inf():
    """Two frames, an attention decoder that always prefers token 5 and one candidate per step
    (``ctc_pre_beam`` 1): "5 5" needs three frames under CTC, so the only continuation of "5" is
    impossible and nothing finishes. The result was the empty hypothesis with score 0, a
    confident empty transcript; it is now score -inf (as the TDT searches say it), while an
    utterance without frames in the same batch keeps score 0."""
    model = make_model(aed=True, ctc=True)
    with torch.no_grad():
        model.heads["aed"].decoder.output.bias[5] += 50.0
    enc, lens = encoder_output([2, 0])
    search = build_searcher("aed_beam", model, SearchConfig(beam_size=1, ctc_weight=1.0,
                                                            ctc_pre_beam=1.0))
    stuck, empty = search(enc, lens)
    assert stuck[0].tokens == () and stuck[0].score == -math.inf
    assert empty[0].tokens == () and empty[0].score == 0.0


@pytest.mark.parametrize("ctc_weight", [0.0, 0.5])
def test_learned_positions_end_the_hypotheses_at_the_heads_target_limit(ctc_weight):
    """With learned positions (``max_len`` 4, so at most 3 tokens after ``<sos>``) a search on
    more frames than that raised "position 4 exceeds max_len=4" mid-search. Hypotheses now end
    at ``max_target_tokens`` with the forced ``<eos>`` scored as ``score_sequences`` scores
    it, as they do at ``enc_len`` tokens; a shorter utterance keeps its frame limit."""
    model = make_model(aed=True, ctc=True)
    torch.manual_seed(0)
    cfg = AEDConfig(
        d_model=16, num_heads=2, num_layers=2, ffn_dim=32, dropout=0.0,
        positional="learned", max_len=4,
    )
    head = AEDHead(cfg, ENC_DIM, VOCAB).eval()
    with torch.no_grad():
        head.decoder.output.bias[EOS] = -50.0  # the decoder never wants to end
    model.heads["aed"] = head
    enc, enc_lens = encoder_output([9, 2])
    search = SearchConfig(beam_size=2, nbest=2, ctc_weight=ctc_weight)
    nbests = build_searcher("aed_beam", model, search)(enc, enc_lens)
    assert [max(len(h.tokens) for h in hyps) for hyps in nbests] == [3, 2]
    for b, hyps in enumerate(nbests):
        assert all(math.isfinite(h.score) for h in hyps)
        if ctc_weight == 0:
            with torch.no_grad():
                att = head.score_sequences(
                    enc[b: b + 1], enc_lens[b: b + 1], [h.tokens for h in hyps]
                )
            expected = [length_normalised(float(a), len(h.tokens), 0.0) for a, h in zip(att, hyps)]
            assert [h.score for h in hyps] == pytest.approx(expected, abs=1e-4)


def test_a_step_extends_the_prefixes_without_copying_them(monkeypatch):
    """Each step copied every row's token tuple to append one token: O(prefix) per row and
    step, a second way of holding hypothesis tokens beside the other beams'
    :class:`~asr.decoding.base.TokenChain`. A row's prefix is now a chain whose parent is a
    row of the step before (shared, not copied); the results are tuples without frames."""
    steps = []
    select = AedBeamSearch._select

    def recording(self, state, *args):
        new = select(self, state, *args)
        steps.append(({id(chain) for chain in state.tokens}, new.tokens))
        return new

    monkeypatch.setattr(AedBeamSearch, "_select", recording)
    model = make_model(aed=True, ctc=True)
    enc, enc_lens = encoder_output([12, 7], seed=2)
    cfg = SearchConfig(beam_size=3, nbest=3, ctc_weight=0.3)
    nbests = build_searcher("aed_beam", model, cfg)(enc, enc_lens)
    assert len(steps) >= 4  # the case is exercised
    for step, (before, chains) in enumerate(steps):
        assert all(len(chain) == step + 1 and id(chain.parent) in before for chain in chains)
    assert all(type(h.tokens) is tuple and h.frames == () for hyps in nbests for h in hyps)
