"""Every head's ``loss`` called on its own (not through ``ASRModel.encode``) with NaN or inf in
the encoder frames beyond ``enc_lens``: the loss, metrics and gradients of the clean batch."""

from __future__ import annotations

import pytest
import torch

from asr.config import from_dict
from asr.model import ASRModel, HeadsConfig, build_heads

ENC_DIM = 12
VOCAB = 9
DECODER = {"d_model": 12, "num_heads": 2, "num_layers": 1, "ffn_dim": 24, "dropout": 0.0}

#: head name -> (its sections, the heads it needs besides itself, e.g. CIF's CTC segments)
CASES = {
    "ctc": {"ctc": {}},
    "rnnt_full": {"transducer": {"loss": "full", "pred_dim": 8, "joiner_dim": 8}},
    "rnnt_pruned": {"transducer": {"loss": "pruned", "pred_dim": 8, "joiner_dim": 8,
                                   "prune_range": 3, "warm_step": 0}},
    "tdt": {"transducer": {"loss": "tdt", "pred_dim": 8, "joiner_dim": 8}},
    "tdt_pruned": {"transducer": {"loss": "pruned_tdt", "pred_dim": 8, "joiner_dim": 8,
                                  "prune_range": 3, "warm_step": 0}},
    "aed": {"aed": DECODER},
    "aed_r2l": {"aed": dict(DECODER, reverse_weight=0.3)},
    "cif": {"cif": dict(DECODER, predictor_dropout=0.0)},
    "cif_ctc_segments": {"cif": dict(DECODER, predictor_dropout=0.0, segments="ctc"),
                         "ctc": {}},
}


def _head(case: str) -> torch.nn.Module:
    """The case's head (the first section), linked to the others as ASRModel links them."""
    torch.manual_seed(0)
    sections = CASES[case]
    heads, weights = build_heads(from_dict(HeadsConfig, sections), ENC_DIM, VOCAB)
    model = ASRModel(torch.nn.Identity(), heads, weights).eval()
    return model.heads[next(iter(sections))]


@pytest.mark.parametrize("garbage", [float("nan"), float("inf")])
@pytest.mark.parametrize("case", list(CASES))
def test_a_head_loss_ignores_non_finite_encoder_padding(case, garbage):
    head = _head(case)
    enc_lens = torch.tensor([10, 6, 7])
    token_lens = torch.tensor([3, 2, 1])
    tokens = torch.tensor([[3, 4, 5], [6, 7, 0], [8, 0, 0]])
    clean = torch.randn(3, 10, ENC_DIM, generator=torch.Generator().manual_seed(1))
    valid = torch.arange(10)[None, :] < enc_lens[:, None]  # (B, T)
    dirty = clean.masked_fill(~valid[:, :, None], garbage)

    def run(enc: torch.Tensor):
        enc = enc.clone().requires_grad_()
        head.zero_grad()
        out = head.loss(enc, enc_lens, tokens, token_lens)
        out.loss.backward()
        grads = {name: p.grad.clone() for name, p in head.named_parameters()
                 if p.grad is not None}
        return out, enc.grad, grads

    clean_out, clean_enc_grad, clean_grads = run(clean)
    dirty_out, dirty_enc_grad, dirty_grads = run(dirty)
    assert torch.isfinite(clean_out.loss) and float(clean_out.loss.detach()) > 0
    assert torch.isfinite(dirty_out.loss)
    torch.testing.assert_close(dirty_out.loss, clean_out.loss)
    assert dirty_out.metrics == pytest.approx(clean_out.metrics)
    assert dirty_grads.keys() == clean_grads.keys() and clean_grads
    for name, grad in clean_grads.items():
        assert torch.isfinite(dirty_grads[name]).all(), name
        torch.testing.assert_close(dirty_grads[name], grad, msg=name)
    assert torch.isfinite(dirty_enc_grad).all()
    torch.testing.assert_close(dirty_enc_grad[valid], clean_enc_grad[valid])
