"""AED beam search: beam 1 == greedy argmax decoding, CTC prefix scores == alignment
enumeration, joint decoding with ctc_weight 1 scores labellings by their CTC probability."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from search_helpers import encoder_output, make_model

from asr.decoding import SearchConfig, build_searcher
from asr.decoding.aed_beam import length_normalised
from asr.decoding.ctc_greedy import ctc_log_probs
from asr.decoding.ctc_prefix_score import CtcPrefixScorer
from asr.heads.decoder_layers import lengths_to_mask

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
