"""ASRModel: weighted multi-head loss, weight validation, building heads from config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from asr.config import ConfigError, from_dict
from asr.decoding.registry import available_searchers, build_searcher
from asr.heads.aed import AEDHead
from asr.heads.cif import CIFHead
from asr.heads.ctc import CTCHead
from asr.model import ASRModel, HeadsConfig, ModelOutput, build_heads
from asr.types import Batch

VOCAB = 10
ENC_DIM = 16


class StubEncoder(nn.Module):
    """Linear over feats, frame rate halved: enough to check the wiring."""

    def __init__(self, feat_dim: int = 8) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * feat_dim, ENC_DIM)

    def forward(self, feats, feat_lens):
        batch, frames, dim = feats.shape
        frames -= frames % 2
        stacked = feats[:, :frames].reshape(batch, frames // 2, 2 * dim)
        return torch.tanh(self.proj(stacked)), feat_lens // 2


HEADS_YAML = {
    "ctc": {},
    "aed": {"d_model": 16, "num_heads": 2, "num_layers": 1, "ffn_dim": 32, "dropout": 0.0},
    "cif": {
        "d_model": 16,
        "num_heads": 2,
        "num_layers": 1,
        "ffn_dim": 32,
        "dropout": 0.0,
        "predictor_dropout": 0.0,
    },
    "loss_weights": {"ctc": 0.3, "aed": 0.7, "cif": 0.5},
}


def _batch() -> Batch:
    token_lens = torch.tensor([3, 2])
    tokens = torch.randint(3, VOCAB, (2, 3)) * (torch.arange(3)[None] < token_lens[:, None])
    return Batch(
        feats=torch.randn(2, 20, 8),
        feat_lens=torch.tensor([20, 15]),
        tokens=tokens,
        token_lens=token_lens,
    )


def _model(data=HEADS_YAML) -> ASRModel:
    heads, weights = build_heads(from_dict(HeadsConfig, data), ENC_DIM, VOCAB)
    return ASRModel(StubEncoder(), heads, weights).eval()


def test_build_heads_from_config():
    model = _model()
    assert isinstance(model.heads["ctc"], CTCHead)
    assert isinstance(model.heads["aed"], AEDHead)
    assert isinstance(model.heads["cif"], CIFHead)
    assert model.loss_weights == {"ctc": 0.3, "aed": 0.7, "cif": 0.5}
    only_ctc = from_dict(HeadsConfig, {"ctc": {"dropout": 0.1}})
    heads, weights = build_heads(only_ctc, ENC_DIM, VOCAB)
    assert list(heads) == ["ctc"] and weights == {"ctc": 1.0}


def test_total_loss_is_weighted_sum_of_head_losses():
    model = _model()
    batch = _batch()
    out = model(batch)
    assert isinstance(out, ModelOutput) and out.num_utterances == 2
    enc, enc_lens = model.encode(batch.feats, batch.feat_lens)
    expected = sum(
        weight * model.heads[name].loss(enc, enc_lens, batch.tokens, batch.token_lens).loss
        for name, weight in model.loss_weights.items()
    )
    torch.testing.assert_close(out.loss, expected)
    for name in model.loss_weights:
        assert out.head_outputs[name].num_utterances == 2
    recombined = sum(w * out.head_outputs[n].loss for n, w in model.loss_weights.items())
    torch.testing.assert_close(out.loss, recombined)
    # tensors instead of a Batch give the same result
    same = model(batch.feats, batch.feat_lens, batch.tokens, batch.token_lens)
    torch.testing.assert_close(same.loss, out.loss)
    metrics = out.metrics
    assert metrics["loss"] == pytest.approx(out.loss.item())
    assert metrics["aed/loss"] == pytest.approx(out.head_outputs["aed"].loss.item())
    assert "ctc/num_infinite" in metrics and "cif/quantity_loss" in metrics
    out.loss.backward()
    assert model.encoder.proj.weight.grad.abs().sum() > 0


def test_zero_weight_head_is_kept_but_not_run():
    data = dict(HEADS_YAML, loss_weights={"ctc": 1.0, "aed": 0.0, "cif": 0.0})
    model = _model(data)
    out = model(_batch())
    assert set(out.head_outputs) == {"ctc"}
    torch.testing.assert_close(out.loss, out.head_outputs["ctc"].loss)
    assert "aed" in model.heads


def test_a_model_says_whether_a_head_of_weight_0_leaves_parameters_out_of_the_loss():
    """The trainer has DDP look for parameters without gradients only then (every rank's
    second step failed with 'Expected to have finished reduction in the prior iteration')."""
    idle = _model(dict(HEADS_YAML, loss_weights={"ctc": 1.0, "aed": 0.0, "cif": 0.5}))
    assert idle.has_unused_parameters
    assert not _model().has_unused_parameters


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"ctc": 1.0}, "must match the heads"),
        ({"ctc": 1.0, "aed": -0.1}, "must be finite and >= 0"),
        ({"ctc": 0.0, "aed": 0.0}, "at least one head must weigh > 0"),
        ({"ctc": float("nan"), "aed": 1.0}, "must be finite"),
    ],
)
def test_weight_validation(weights, message):
    heads = {"ctc": CTCHead(from_dict(HeadsConfig, {"ctc": {}}).ctc, ENC_DIM, VOCAB)}
    heads["aed"] = _model().heads["aed"]
    with pytest.raises(ValueError, match=message):
        ASRModel(StubEncoder(), heads, weights)


def test_training_needs_a_weighed_head_and_cif_ctc_segments_a_trained_ctc_head():
    """A CIF head with CTC segments trains on the CTC head's paths: a CTC weight of 0 is refused
    for training (``asr train`` runs :meth:`HeadsConfig.check_training`), not when a trained
    model's config is read back; with the CIF head silent too there is nothing to refuse."""
    cif = dict(HEADS_YAML["cif"], segments="ctc")
    cfg = from_dict(HeadsConfig, {"ctc": {}, "cif": cif, "loss_weights": {"ctc": 0.0}})
    with pytest.raises(ValueError, match="loss_weights.ctc: 0 leaves untrained"):
        cfg.check_training()
    build_heads(cfg, ENC_DIM, VOCAB)
    from_dict(HeadsConfig, {"ctc": {}, "cif": cif, "loss_weights": {"ctc": 0.1}}).check_training()
    from_dict(HeadsConfig, {"ctc": {}, "aed": HEADS_YAML["aed"], "cif": cif,
                            "loss_weights": {"ctc": 0.0, "cif": 0.0}}).check_training()
    from_dict(HeadsConfig, {"ctc": {}, "cif": HEADS_YAML["cif"],
                            "loss_weights": {"ctc": 0.0}}).check_training()
    silent = from_dict(HeadsConfig, {"ctc": {}, "aed": {}, "loss_weights": {"ctc": 0, "aed": 0}})
    with pytest.raises(ValueError, match="at least one head must weigh > 0"):
        silent.check_training()  # reads (a documented off value), does not train


def test_rejects_non_heads_and_bad_configs():
    with pytest.raises(TypeError, match="no loss"):
        ASRModel(StubEncoder(), {"bad": nn.Linear(2, 2)}, {"bad": 1.0})
    with pytest.raises(ConfigError, match="not configured heads"):
        from_dict(HeadsConfig, {"ctc": {}, "loss_weights": {"aed": 1.0}})
    with pytest.raises(ConfigError, match="unknown key 'aed.d_modle'"):
        from_dict(HeadsConfig, {"aed": {"d_modle": 3}})
    with pytest.raises(ValueError, match="at least one of"):
        build_heads(HeadsConfig(), ENC_DIM, VOCAB)
    with pytest.raises(ValueError, match="needs feat_lens"):
        _model()(torch.randn(1, 4, 8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = _model()
    batch = _batch()
    cpu = model(batch)
    gpu = model.to("cuda")(batch.to("cuda"))
    for name, output in cpu.head_outputs.items():
        torch.testing.assert_close(
            gpu.head_outputs[name].loss.cpu(), output.loss, rtol=1e-3, atol=1e-3
        )
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = model(batch.to("cuda"))
    assert mixed.loss.dtype == torch.float32 and torch.isfinite(mixed.loss)


def test_transducer_plus_ctc_from_config_and_warm_up_step_reaches_the_head():
    data = {
        "transducer": {"loss": "pruned", "pred_dim": 8, "joiner_dim": 8, "warm_step": 10},
        "ctc": {},
        "loss_weights": {"transducer": 1.0, "ctc": 0.2},
    }
    model = _model(data)
    assert list(model.heads) == ["transducer", "ctc"]
    head = model.heads["transducer"]
    assert head.loss_scales(5) == pytest.approx((0.75, 0.55))
    batch = _batch()
    out = model(batch, step=5)
    expected = out.head_outputs["transducer"].loss + 0.2 * out.head_outputs["ctc"].loss
    torch.testing.assert_close(out.loss, expected)
    enc, enc_lens = model.encode(batch.feats, batch.feat_lens)
    at_step_5 = head.loss(enc, enc_lens, batch.tokens, batch.token_lens, step=5).loss
    warmed_up = head.loss(enc, enc_lens, batch.tokens, batch.token_lens).loss
    torch.testing.assert_close(out.head_outputs["transducer"].loss, at_step_5)
    assert not torch.allclose(at_step_5, warmed_up)  # the step really reaches the head
    assert "transducer/simple_loss" in out.metrics


def test_every_head_drops_and_counts_an_utterance_without_frames():
    """An utterance whose encoder output is empty is infeasible for every head alike: no loss,
    no gradient, counted in ``<head>/num_infinite``; the others' losses are those they have
    alone, whatever the padding holds (AED and CIF cross-attended to padding for it)."""
    data = dict(HEADS_YAML, transducer={"loss": "full", "pred_dim": 8, "joiner_dim": 8},
                cif=dict(HEADS_YAML["cif"], segments="ctc"))
    data["loss_weights"] = dict(HEADS_YAML["loss_weights"], transducer=1.0)
    torch.manual_seed(0)
    model = _model(data)
    batch = _batch()
    frameless = Batch(feats=batch.feats, feat_lens=torch.tensor([20, 1]),
                      tokens=batch.tokens, token_lens=batch.token_lens)
    out = model(frameless)
    for name in ("transducer", "ctc", "aed", "cif"):
        assert out.metrics[f"{name}/num_infinite"] == 1.0, name
    alone = model(Batch(feats=batch.feats[:1], feat_lens=torch.tensor([20]),
                        tokens=batch.tokens[:1], token_lens=batch.token_lens[:1]))
    for name, output in out.head_outputs.items():
        torch.testing.assert_close(output.loss, alone.head_outputs[name].loss, msg=name)
    noisy = frameless.feats.clone()
    noisy[1] = 5.0 * torch.randn_like(noisy[1])
    again = model(Batch(feats=noisy, feat_lens=frameless.feat_lens, tokens=batch.tokens,
                        token_lens=batch.token_lens))
    torch.testing.assert_close(again.loss, out.loss)
    assert out.metrics["aed/num_tokens"] == float(batch.token_lens[0] + 1)


class PaddingGarbageEncoder(nn.Module):
    """Linear over feats (no subsampling); frames beyond ``feat_lens`` hold ``garbage`` (None:
    what the linear layer makes of the padding), as a real encoder's padding may (fp16
    overflow on padding, a -inf from a masked position)."""

    def __init__(self, garbage: float | None, feat_dim: int = 8) -> None:
        super().__init__()
        self.proj = nn.Linear(feat_dim, ENC_DIM)
        self.garbage = garbage

    def forward(self, feats, feat_lens):
        out = torch.tanh(self.proj(feats))
        if self.garbage is not None:
            valid = torch.arange(feats.shape[1])[None, :] < feat_lens[:, None]
            out = out.masked_fill(~valid.unsqueeze(-1), self.garbage)
        return out, feat_lens


def _garbage_models(transducer: str, garbage: float) -> tuple[ASRModel, ASRModel]:
    """Two models with the same weights and every head kind: encoder padding clean, and full
    of ``garbage``."""
    data = dict(HEADS_YAML, transducer={"loss": transducer, "pred_dim": 8, "joiner_dim": 8,
                                        "prune_range": 3, "warm_step": 0})
    data["loss_weights"] = dict(HEADS_YAML["loss_weights"], transducer=1.0)
    torch.manual_seed(0)
    heads, weights = build_heads(from_dict(HeadsConfig, data), ENC_DIM, VOCAB)
    clean = ASRModel(PaddingGarbageEncoder(None), heads, weights).eval()
    dirty = ASRModel(PaddingGarbageEncoder(garbage), heads, weights).eval()
    dirty.encoder.load_state_dict(clean.encoder.state_dict())
    return clean, dirty


@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("transducer", ["full", "pruned", "tdt", "pruned_tdt"])
def test_non_finite_encoder_padding_changes_no_loss_or_gradient(transducer, garbage):
    """Encoder frames beyond enc_lens holding nan/inf: every head's loss and metrics, and the
    gradients of every weight and of the valid input frames, are those of the clean batch
    (0 * nan in a joiner's backward, a masked attention or CTC's gradient made NaN of them)."""
    batch = _batch()
    valid = torch.arange(20)[None, :] < batch.feat_lens[:, None]  # (B, T)

    def run(model):
        feats = batch.feats.clone().requires_grad_()
        model.zero_grad()
        out = model(feats, batch.feat_lens, batch.tokens, batch.token_lens)
        out.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()
                 if p.grad is not None}
        return out, feats.grad, grads

    clean, dirty = _garbage_models(transducer, garbage)
    clean_out, clean_feats, clean_grads = run(clean)
    dirty_out, dirty_feats, dirty_grads = run(dirty)
    assert torch.isfinite(clean_out.loss)
    torch.testing.assert_close(dirty_out.loss, clean_out.loss)
    assert dirty_out.metrics == pytest.approx(clean_out.metrics)
    assert dirty_grads.keys() == clean_grads.keys()
    for name, grad in clean_grads.items():
        torch.testing.assert_close(dirty_grads[name], grad, msg=name)
    torch.testing.assert_close(dirty_feats[valid], clean_feats[valid])


@pytest.mark.parametrize("garbage", [float("nan"), float("inf")])
@pytest.mark.parametrize("transducer", ["full", "tdt"])
def test_non_finite_encoder_padding_changes_no_search(transducer, garbage):
    """Every searcher of every head finds the clean batch's hypotheses (scores included) when
    the encoder's padding holds nan/inf (the attention decoders' did not)."""
    batch = _batch()
    found = []
    for model in _garbage_models(transducer, garbage):
        with torch.no_grad():
            enc, enc_lens = model.encode(batch.feats, batch.feat_lens)
            found.append({name: build_searcher(name, model)(enc, enc_lens)
                          for name in available_searchers(model)})
    assert found[1] == found[0]
