"""Attention rescoring re-ranks the first pass by the documented formula; CIF greedy."""

from __future__ import annotations

import pytest
import torch
from search_helpers import encoder_output, make_model

from asr.decoding import SearchConfig, build_searcher


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
                (0.7 * float(a) + 0.3 * h.score, h.tokens, h.timestamps)
                for a, h in zip(att, expected_pool)
            ),
            reverse=True,
        )
        assert [h.tokens for h in hyps] == [tokens for _, tokens, _ in expected]
        assert [h.timestamps for h in hyps] == [frames for _, _, frames in expected]
        assert [h.score for h in hyps] == pytest.approx([s for s, _, _ in expected], abs=1e-4)


def test_cif_greedy_is_the_argmax_of_the_fired_tokens():
    model = make_model(cif=True)
    enc, enc_lens = encoder_output([12, 7])
    hyps = build_searcher("cif_greedy", model)(enc, enc_lens)
    with torch.no_grad():
        logits, token_lens = model.heads["cif"](enc, enc_lens)
    for b, count in enumerate(token_lens.tolist()):
        expected = tuple(t for t in logits[b, :count].argmax(-1).tolist() if t != 0)
        assert hyps[b][0].tokens == expected and hyps[b][0].timestamps == ()
    assert int(token_lens.sum()) > 0
