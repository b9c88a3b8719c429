"""Properties every head's loss holds, in a float64 model (float32 only where the loss itself is
float32: torchaudio's full RNN-T loss):

* an utterance's loss, metrics and gradients are those it has alone, whatever the batch holds
  beside it (longer utterances, extra frame and token padding, infeasible utterances) and in
  whatever order: the heads report sums over utterances (``LossOutput``), so a batch's loss and
  metrics are the sums of its utterances' (the trainer divides them by the utterance count);
* a head of loss weight 0 is not run and gets no gradient;
* no target holds an id that is not a token (blank, the attention decoders' ``<sos/eos>``);
* the AED's label smoothing is summed over the valid positions only, and CIF's quantity loss
  counts the end slot and the threshold.
"""

from __future__ import annotations

import pytest
import torch

from asr.config import ConfigError, from_dict
from asr.heads.decoder_layers import lengths_to_mask
from asr.losses.label_smoothing import label_smoothing_loss
from asr.model import ASRModel, HeadsConfig, build_heads

ENC_DIM, VOCAB = 12, 9
DECODER = {"d_model": 12, "num_heads": 2, "num_layers": 1, "ffn_dim": 24, "dropout": 0.0}
TRANSDUCER = {"pred_dim": 8, "joiner_dim": 8, "prune_range": 3, "warm_step": 0}

#: case -> its sections (the first one is the head under test; the others are those it needs)
CASES = {
    "ctc": {"ctc": {}},
    "rnnt_full": {"transducer": dict(TRANSDUCER, loss="full")},
    "rnnt_full_lstm": {"transducer": dict(TRANSDUCER, loss="full", predictor="lstm",
                                          lstm_hidden_dim=6, predictor_dropout=0.0)},
    "rnnt_pruned": {"transducer": dict(TRANSDUCER, loss="pruned")},
    "tdt": {"transducer": dict(TRANSDUCER, loss="tdt")},
    "tdt_sigma_omega": {"transducer": dict(TRANSDUCER, loss="tdt", sigma=0.05, omega=0.2)},
    "tdt_pruned": {"transducer": dict(TRANSDUCER, loss="pruned_tdt")},
    "aed": {"aed": DECODER},
    "aed_r2l_learned": {"aed": dict(DECODER, reverse_weight=0.3, num_r2l_layers=1,
                                    positional="learned", max_len=16)},
    "cif": {"cif": dict(DECODER, predictor_dropout=0.0)},
    "cif_end_slot": {"cif": dict(DECODER, predictor_dropout=0.0, end_slot=True, threshold=0.8,
                                 quantity_weight=0.5, label_smoothing=0.2)},
    "cif_ctc_segments": {"cif": dict(DECODER, predictor_dropout=0.0, segments="ctc"), "ctc": {}},
}
FLOAT32_LOSSES = {"rnnt_full", "rnnt_full_lstm"}  # torchaudio takes float32 logits only

# (frames, tokens) per utterance: a repeat CTC needs a frame for, the longest utterance, an empty
# target, more tokens than frames (CTC and the pruned band cannot align it), no frames at all
UTTERANCES = [(3, [3, 3]), (11, [2, 4, 4, 5, 6]), (7, []), (5, [7, 8, 2]), (2, [4, 5, 6, 7]),
              (0, [5, 6])]


class PassThrough(torch.nn.Module):
    """An encoder whose output is its input: the heads see the test's frames."""

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor):
        return feats, feat_lens


def _model(case: str, weights: dict[str, float] | None = None) -> ASRModel:
    torch.manual_seed(0)
    sections = dict(CASES[case])
    if weights is not None:
        sections["loss_weights"] = weights
    heads, loss_weights = build_heads(from_dict(HeadsConfig, sections), ENC_DIM, VOCAB)
    return ASRModel(PassThrough(), heads, loss_weights).double().eval()


def _head(case: str) -> torch.nn.Module:
    return _model(case).heads[next(iter(CASES[case]))]


def _batch(extra_frames: int = 0, extra_tokens: int = 0, pad: int = -1):
    """Encoder frames (B, T, D) float64 with random padding, enc_lens, tokens padded with
    ``pad`` and token_lens of :data:`UTTERANCES`, ``extra_*`` padding columns more."""
    gen = torch.Generator().manual_seed(1)
    frames = max(t for t, _ in UTTERANCES) + extra_frames
    width = max(len(y) for _, y in UTTERANCES) + extra_tokens
    enc = torch.randn(len(UTTERANCES), frames, ENC_DIM, generator=gen, dtype=torch.float64)
    tokens = torch.full((len(UTTERANCES), width), pad, dtype=torch.int64)
    for b, (_, target) in enumerate(UTTERANCES):
        tokens[b, : len(target)] = torch.tensor(target, dtype=torch.int64)
    enc_lens = torch.tensor([t for t, _ in UTTERANCES])
    token_lens = torch.tensor([len(y) for _, y in UTTERANCES])
    return enc, enc_lens, tokens, token_lens


def _run(head, enc, enc_lens, tokens, token_lens):
    """The head's loss output, the gradient of its input frames and of its weights."""
    enc = enc.clone().requires_grad_()
    head.zero_grad()
    out = head.loss(enc, enc_lens, tokens, token_lens)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in head.named_parameters() if p.grad is not None}
    return out, enc.grad, grads


def _tolerance(case: str) -> dict[str, float]:
    return dict(rtol=1e-5, atol=1e-5) if case in FLOAT32_LOSSES else dict(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", list(CASES))
def test_a_batch_loss_is_the_sum_of_its_utterances_alone(case):
    """Loss, every metric and every gradient of a padded batch (extra padding frames and token
    columns, tokens padded with -1) are the sums of its utterances' alone, unpadded, to float64
    precision; infeasible utterances are dropped and counted alike in both."""
    head = _head(case)
    batch = _batch(extra_frames=3, extra_tokens=2)
    out, enc_grad, grads = _run(head, *batch)
    enc, enc_lens, tokens, token_lens = batch
    alone = [
        _run(head, enc[b : b + 1, :t], enc_lens[b : b + 1], tokens[b : b + 1, : len(y)],
             token_lens[b : b + 1])
        for b, (t, y) in enumerate(UTTERANCES)
    ]  # fmt: skip
    tol = _tolerance(case)
    want_dtype = torch.float32 if case in FLOAT32_LOSSES else torch.float64
    assert out.loss.dtype == want_dtype  # CTC, AED and CIF losses were cut to float32
    assert out.num_utterances == len(UTTERANCES) and float(out.loss.detach()) > 0
    torch.testing.assert_close(out.loss, sum(a.loss for a, _, _ in alone), **tol)
    assert out.metrics.keys() == alone[0][0].metrics.keys()
    for key, value in out.metrics.items():
        total = sum(a.metrics[key] for a, _, _ in alone)
        assert value == pytest.approx(total, rel=tol["rtol"], abs=tol["atol"]), key
    for b, (t, _) in enumerate(UTTERANCES):
        torch.testing.assert_close(enc_grad[b, :t], alone[b][1][0], **tol)
        assert (enc_grad[b, t:] == 0).all()  # padding frames get no gradient
    for name, grad in grads.items():
        want = sum(a[2][name] for a in alone if name in a[2])
        torch.testing.assert_close(grad, want, **tol, msg=name)


@pytest.mark.parametrize("case", list(CASES))
def test_a_batch_loss_does_not_depend_on_the_order_of_its_utterances(case):
    head = _head(case)
    enc, enc_lens, tokens, token_lens = _batch()
    out, enc_grad, grads = _run(head, enc, enc_lens, tokens, token_lens)
    order = torch.tensor([4, 1, 5, 0, 3, 2])
    shuffled, shuffled_grad, shuffled_grads = _run(
        head, enc[order], enc_lens[order], tokens[order], token_lens[order]
    )
    tol = _tolerance(case)
    torch.testing.assert_close(shuffled.loss, out.loss, **tol)
    assert shuffled.metrics == pytest.approx(out.metrics, rel=tol["rtol"], abs=tol["atol"])
    torch.testing.assert_close(shuffled_grad, enc_grad[order], **tol)
    for name, grad in grads.items():
        torch.testing.assert_close(shuffled_grads[name], grad, **tol, msg=name)


def test_a_float64_model_sums_its_head_losses_in_float64():
    """The weighted total keeps the heads' float64 (it was cast to float32, so a float64 model's
    loss was no sum of its heads' to float64 precision)."""
    sections = {"transducer": dict(TRANSDUCER, loss="pruned"), "ctc": {}, "aed": DECODER,
                "cif": dict(DECODER, predictor_dropout=0.0)}
    weights = {"transducer": 1.0, "ctc": 0.3, "aed": 0.7, "cif": 0.25}
    heads, weights = build_heads(from_dict(HeadsConfig, dict(sections, loss_weights=weights)),
                                 ENC_DIM, VOCAB)
    torch.manual_seed(0)
    model = ASRModel(PassThrough(), heads, weights).double().eval()
    enc, enc_lens, tokens, token_lens = _batch()
    out = model(enc, enc_lens, tokens, token_lens)
    assert out.loss.dtype == torch.float64
    want = sum(w * out.head_outputs[name].loss for name, w in weights.items())
    torch.testing.assert_close(out.loss, want, rtol=1e-14, atol=0)
    assert out.metrics["loss"] == float(out.loss.detach())


ALL_HEADS = {"transducer": dict(TRANSDUCER, loss="pruned"), "ctc": {}, "aed": DECODER,
             "cif": dict(DECODER, predictor_dropout=0.0, segments="ctc")}


@pytest.mark.parametrize("silent", list(ALL_HEADS))
def test_a_zero_weight_head_is_not_run_and_gets_no_gradient(silent, monkeypatch):
    """Weight 0: the head's loss is never called, none of its weights gets a gradient (the CIF
    head with CTC segments still reads the CTC head, without gradient), and the encoder's
    gradient is that of the model without the head."""
    weights = {name: 0.0 if name == silent else 1.0 for name in ALL_HEADS}
    torch.manual_seed(0)
    heads, _ = build_heads(from_dict(HeadsConfig, ALL_HEADS), ENC_DIM, VOCAB)
    model = ASRModel(PassThrough(), heads, weights).double().eval()

    def refuse(*args, **kwargs):
        raise AssertionError(f"the loss of '{silent}' (weight 0) was computed")

    monkeypatch.setattr(model.heads[silent], "loss", refuse)
    enc, enc_lens, tokens, token_lens = _batch()
    enc = enc.requires_grad_()
    out = model(enc, enc_lens, tokens, token_lens)
    out.loss.backward()
    assert silent not in out.head_outputs and f"{silent}/loss" not in out.metrics
    assert all(p.grad is None for p in model.heads[silent].parameters()), silent
    others = [name for name in ALL_HEADS if name != silent]
    for name in others:
        assert all(p.grad is not None for p in model.heads[name].parameters()), name
    alone = enc.detach().clone().requires_grad_()
    total = sum(model.heads[name].loss(alone, enc_lens, tokens, token_lens).loss for name in others)
    want = torch.autograd.grad(total, alone)[0]
    torch.testing.assert_close(enc.grad, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_a_target_holding_the_blank_is_refused_naming_it(case):
    """No tokenizer here emits the blank (id 0) as a token: a target holding it is broken data,
    which CTC (PyTorch's kernel) and the transducer losses turned into a finite, meaningless
    loss, and the decoders learnt to emit; the same id as padding is fine."""
    head = _head(case)
    enc, enc_lens, tokens, token_lens = _batch(pad=0)
    head.loss(enc, enc_lens, tokens, token_lens)  # zeros beyond token_lens: padding
    tokens[3, 1] = 0
    with pytest.raises(ValueError, match=r"tokens\[3, 1\] = 0 is the blank, which no target"):
        head.loss(enc, enc_lens, tokens, token_lens)


@pytest.mark.parametrize(
    ("case", "token", "what"),
    [("aed", 1, "the AED sos_id and eos_id"), ("cif_end_slot", 1, "the CIF end_id")],
)
def test_a_target_holding_the_end_label_is_refused_naming_it(case, token, what):
    """An attention decoder's ``<sos/eos>`` (the CIF end slot's label) inside a target taught the
    decoder to end the sentence there; a CIF head without an end slot has no end label."""
    enc, enc_lens, tokens, token_lens = _batch()
    tokens[1, 2] = token
    with pytest.raises(ValueError, match=rf"tokens\[1, 2\] = {token} is {what}, which no target"):
        _head(case).loss(enc, enc_lens, tokens, token_lens)
    assert torch.isfinite(_head("cif").loss(enc, enc_lens, tokens, token_lens).loss)


def test_aed_label_smoothing_is_summed_over_valid_positions_only():
    """The AED loss is the KL of the smoothed target over ``y_1 .. y_U <eos>`` of each utterance
    with frames, nothing from the padding positions (targets 0) nor the frameless utterance."""
    head = _head("aed_r2l_learned")
    enc, enc_lens, tokens, token_lens = _batch(extra_tokens=2, pad=0)
    out = head.loss(enc, enc_lens, tokens, token_lens)
    memory, mask = head.memory_proj(enc), lengths_to_mask(enc_lens, enc.shape[1])
    weight = head.cfg.reverse_weight
    want = torch.zeros((), dtype=torch.float64)
    for decoder, toks, share in ((head.decoder, tokens, 1 - weight),
                                 (head.r2l_decoder, head._reverse(tokens, token_lens), weight)):
        inputs, targets = head._teacher_forcing(toks, token_lens)
        per_position = label_smoothing_loss(decoder(inputs, memory, mask), targets, 0.1)
        for b, (frames, target) in enumerate(UTTERANCES):
            if frames:
                assert targets[b, len(target)] == head.cfg.eos_id
                want = want + share * per_position[b, : len(target) + 1].sum()
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    valid_utts = [len(y) + 1 for t, y in UTTERANCES if t]
    assert out.metrics["num_tokens"] == sum(valid_utts)


@pytest.mark.parametrize("case", ["cif", "cif_end_slot"])
def test_cif_quantity_loss_counts_the_end_slot_and_the_threshold(case):
    """The quantity loss is ``|sum(alpha) / threshold - L|`` with L = U (+ 1 with an end slot)
    for each utterance with frames, and the teacher-forced weights fire exactly L tokens."""
    head = _head(case)
    cfg = head.cfg
    enc, enc_lens, tokens, token_lens = _batch(pad=0)
    out = head.loss(enc, enc_lens, tokens, token_lens)
    alphas = head.predict_alphas(enc, enc_lens)
    slots = token_lens + int(cfg.end_slot)
    has_frames = enc_lens > 0
    want = ((alphas.sum(1) / cfg.threshold - slots).abs() * has_frames).sum()
    assert out.metrics["quantity_loss"] == pytest.approx(float(want.detach()), rel=1e-12)
    ce = out.metrics["ce_loss"]
    total = ce + cfg.quantity_weight * float(want.detach())
    assert float(out.loss.detach()) == pytest.approx(total, rel=1e-12)
    inputs, targets, target_lens, _ = head.teacher_inputs(enc, enc_lens, tokens, token_lens)
    assert target_lens.tolist() == slots.tolist() and inputs.shape[1] == int(slots.max())
    assert out.metrics["num_tokens"] == float((slots * has_frames).sum())


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"aed": dict(DECODER, label_smoothing=1.0)}, r"aed: label_smoothing must be in \[0, 1\)"),
        ({"aed": dict(DECODER, label_smoothing=-0.1)}, r"aed: label_smoothing must be in \[0, 1\)"),
        ({"aed": dict(DECODER, d_model=15, num_heads=3)}, "aed: sinusoidal positions need an "
                                                          "even d_model, got 15"),
        ({"cif": dict(DECODER, label_smoothing=1.5)}, r"cif: label_smoothing must be in \[0, 1\)"),
        ({"cif": dict(DECODER, d_model=15, num_heads=3)}, "cif: sinusoidal positions need an "
                                                          "even d_model, got 15"),
        ({"cif": dict(DECODER, quantity_weight=-1.0)}, "cif: quantity_weight must be >= 0"),
        ({"cif": dict(DECODER, quantity_weight=float("nan"))}, "cif: quantity_weight must be"),
        ({"transducer": dict(TRANSDUCER, lm_only_scale=1.5)}, "transducer: lm_only_scale and "
                                                              "am_only_scale must be >= 0"),
        ({"transducer": dict(TRANSDUCER, am_only_scale=-0.25)}, "am_only_scale must be >= 0"),
        ({"transducer": dict(TRANSDUCER, lm_only_scale=0.75, am_only_scale=0.5)},
         "with a sum <= 1, got 0.75 and 0.5"),
        ({"transducer": dict(TRANSDUCER, simple_loss_scale=-0.5)},
         "transducer: simple_loss_scale must be >= 0"),
    ],
)
def test_a_head_option_that_cannot_train_is_refused_when_the_config_is_read(sections, message):
    """Reading the config (``asr train`` exits 2 on it, before any data is read) refuses, naming
    the section and the key, what passed it before: a label smoothing outside [0, 1) and an odd
    ``d_model`` under sinusoidal positions failed only at the first training step (after the data
    and its CMVN statistics were read, the message naming neither the head nor the key); a
    negative quantity weight, lm-only / am-only smoothing weights leaving the joint log-probs a
    negative weight, or a negative simple-loss scale trained silently towards a worse model (a
    loss without a floor)."""
    with pytest.raises(ConfigError, match=message):
        from_dict(HeadsConfig, sections, "heads")


def test_the_extreme_valid_head_options_are_accepted():
    sections = {"transducer": dict(TRANSDUCER, lm_only_scale=0.5, am_only_scale=0.5,
                                   simple_loss_scale=0.0),
                "aed": dict(DECODER, label_smoothing=0.0, d_model=15, num_heads=3,
                            positional="learned"),
                "cif": dict(DECODER, label_smoothing=0.0, quantity_weight=0.0)}
    cfg = from_dict(HeadsConfig, sections)
    assert cfg.aed.d_model == 15 and cfg.transducer.am_only_scale == 0.5
