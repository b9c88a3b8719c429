"""RNN-T searchers: batched label-looping greedy == per-utterance greedy, greedy (one symbol per
frame) == modified beam search of beam 1, the max-symbols guard."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from search_helpers import assert_frames_valid, encoder_output, make_model
from torch.overrides import TorchFunctionMode

from asr.decoding import SearchConfig, build_searcher
from asr.decoding.transducer_beam import topk_per_group
from asr.decoding.transducer_common import TransducerScorer
from asr.types import Hypothesis


def reference_greedy(head, enc, length, max_symbols: int) -> Hypothesis:
    """Textbook one-utterance RNN-T greedy search (frame loop, symbol loop)."""
    scorer = TransducerScorer(head)
    pred_proj, state = scorer.initial(1, enc.device)
    enc_proj = scorer.project_encoder(enc[:length])
    tokens, frames, score = [], [], 0.0
    with torch.no_grad():
        for t in range(length):
            for _ in range(max_symbols):
                token_lp, _ = scorer.log_probs(enc_proj[t : t + 1], pred_proj)
                best_lp, best = token_lp[0].max(dim=0)
                score += float(best_lp)
                if int(best) == head.blank_id:
                    break
                tokens.append(int(best))
                frames.append(t)
                pred_proj, state = scorer.predict(best.view(1), state)
    return Hypothesis(tuple(tokens), score, tuple(frames))


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
@pytest.mark.parametrize("max_symbols", [1, 3])
def test_batched_greedy_equals_per_utterance_greedy(predictor, max_symbols):
    model = make_model(transducer="pruned", predictor=predictor)
    enc, enc_lens = encoder_output([11, 5, 8, 0, 1])
    cfg = SearchConfig(max_symbols_per_frame=max_symbols)
    batched = build_searcher("transducer_greedy", model, cfg)(enc, enc_lens)
    for b, length in enumerate(enc_lens.tolist()):
        ref = reference_greedy(model.heads["transducer"], enc[b], length, max_symbols)
        assert batched[b][0].tokens == ref.tokens
        assert batched[b][0].frames == ref.frames
        assert batched[b][0].score == pytest.approx(ref.score, abs=1e-4)
    assert_frames_valid(batched, enc_lens)
    assert any(len(h[0].tokens) for h in batched)


@pytest.mark.parametrize("max_symbols", [1, 2, 4])
def test_max_symbols_per_frame_guard(max_symbols):
    model = make_model(transducer="pruned")
    enc, enc_lens = encoder_output([12, 9])
    cfg = SearchConfig(max_symbols_per_frame=max_symbols, blank_penalty=4.0)
    for hyps in build_searcher("transducer_greedy", model, cfg)(enc, enc_lens):
        per_frame = Counter(hyps[0].frames)
        assert max(per_frame.values()) == max_symbols  # blank penalty: the guard is reached


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
def test_greedy_one_symbol_per_frame_equals_modified_beam_of_one(predictor):
    model = make_model(transducer="full", predictor=predictor)
    enc, enc_lens = encoder_output([13, 6, 9])
    greedy = build_searcher("transducer_greedy", model, SearchConfig(max_symbols_per_frame=1))
    beam = build_searcher("transducer_beam", model, SearchConfig(beam_size=1))
    for g, m in zip(greedy(enc, enc_lens), beam(enc, enc_lens)):
        assert g[0].tokens == m[0].tokens and g[0].frames == m[0].frames
        assert g[0].score == pytest.approx(m[0].score, abs=1e-4)


def test_modified_beam_of_one_with_length_norm_is_greedy_normalised():
    """Beam 1 with length_norm: greedy's tokens, its score divided by (L + 1) ** 0.7."""
    model = make_model(transducer="full")
    enc, enc_lens = encoder_output([13, 6, 9])
    greedy = build_searcher("transducer_greedy", model, SearchConfig(max_symbols_per_frame=1))
    beam = build_searcher("transducer_beam", model, SearchConfig(beam_size=1, length_norm=0.7))
    for g, m in zip(greedy(enc, enc_lens), beam(enc, enc_lens)):
        assert g[0].tokens == m[0].tokens and g[0].frames == m[0].frames
        expected = g[0].score / (len(g[0].tokens) + 1) ** 0.7
        assert m[0].score == pytest.approx(expected, abs=1e-4)


def test_modified_beam_keeps_at_most_one_symbol_per_frame_and_distinct_hypotheses():
    model = make_model(transducer="pruned")
    enc, enc_lens = encoder_output([10, 7])
    nbests = build_searcher("transducer_beam", model, SearchConfig(beam_size=4, nbest=4))(
        enc, enc_lens
    )
    for hyps in nbests:
        assert len(hyps) == 4 and len({h.tokens for h in hyps}) == 4
        for hyp in hyps:
            assert len(set(hyp.frames)) == len(hyp.frames)
    assert_frames_valid(nbests, enc_lens)


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
@pytest.mark.parametrize("context_size", [1, 2, 3])
def test_predictor_step_equals_forward(predictor, context_size):
    """The one-token ``step`` used by searches == the training ``forward`` token by token."""
    from asr.heads.transducer import TransducerConfig, TransducerHead

    cfg = TransducerConfig(
        predictor=predictor, pred_dim=8, joiner_dim=8, lstm_hidden_dim=8, context_size=context_size
    )
    net = TransducerHead(cfg, 8, 7).eval().predictor
    tokens = torch.randint(0, 7, (3, 5))
    with torch.no_grad():
        full, _ = net(tokens, net.init_state(3, "cpu"))
        state = net.init_state(3, "cpu")
        for u in range(5):
            pred, state = net.step(tokens[:, u], state)
            torch.testing.assert_close(pred, full[:, u], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("garbage", [float("nan"), float("inf")])
@pytest.mark.parametrize(("loss", "names"), [("full", ["transducer_greedy", "transducer_beam"]),
                                            ("tdt", ["tdt_greedy", "tdt_beam"])])
def test_non_finite_padding_frames_do_not_change_the_search(loss, names, garbage):
    """Frames beyond enc_lens holding nan/inf give the clean batch's hypotheses and scores."""
    model = make_model(transducer=loss)
    enc, enc_lens = encoder_output([9, 6, 7])
    dirty = enc.clone()
    for b, n in enumerate(enc_lens.tolist()):
        dirty[b, n:] = garbage
    for name in names:
        searcher = build_searcher(name, model, SearchConfig(beam_size=3))
        assert searcher(dirty, enc_lens) == searcher(enc, enc_lens), name


def test_topk_per_group_by_hand():
    """Per group of rows the k best entries as flat ``row * V + column`` indices with their
    scores, best first, never an impossible (-inf) one, even when a group has fewer finite
    entries than k; groups of different sizes (the later one larger) and a group with nothing
    finite."""
    inf = float("inf")
    scores = torch.tensor([
        [-1.0, -inf],  # group 0
        [-2.0, -0.5],  # group 1
        [-inf, -3.0],
        [-0.1, -inf],
        [-inf, -inf],  # group 2
    ])
    owners = torch.tensor([0, 1, 1, 1, 2])
    def pick(row: int, column: int) -> tuple[int, float]:  # flat index, the float32 score
        return row * 2 + column, float(scores[row, column])

    assert topk_per_group(scores, owners, 3, 3) == [
        [pick(0, 0)], [pick(3, 0), pick(1, 1), pick(1, 0)], []
    ]
    assert topk_per_group(scores, owners, 3, 1) == [[pick(0, 0)], [pick(3, 0)], []]
    third = torch.tensor([[1 / 3]])  # a float32 score comes back as that float32, exactly
    assert topk_per_group(third, torch.tensor([0]), 1, 1) == [[(0, float(third))]]


def test_a_beam_frame_transfers_its_picks_not_every_candidate_score():
    """Each frame copied the whole (hypotheses, V) candidate matrix to the host to read the
    scores of the K picks per stream (V floats per hypothesis per frame: a large transfer for
    a large vocabulary); the grouped top-k now hands back the picks' scores with their
    indices, and the search is unchanged (the same float32 values)."""
    vocab = 40
    model = make_model(transducer="pruned", vocab=vocab)
    enc, enc_lens = encoder_output([12, 7])
    searcher = build_searcher("transducer_beam", model, SearchConfig(beam_size=3))
    sizes: list[int] = []

    class Transfers(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") == "tolist":
                sizes.append(args[0].numel())
            return func(*args, **(kwargs or {}))

    with Transfers():
        hyps = searcher(enc, enc_lens)
    assert sizes and max(sizes) < vocab  # not even one hypothesis's candidates
    assert hyps == build_searcher("transducer_beam", model, SearchConfig(beam_size=3))(
        enc, enc_lens)
