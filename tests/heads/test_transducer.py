"""TransducerHead, Joiner and predictors: loss contract, oracles through the head, warm-up,
incremental predictor == batch predictor."""

import sys
import types

import pytest
import torch

from asr.config import ConfigError, from_dict
from asr.heads.joiner import Joiner
from asr.heads.predictor import LstmPredictor, StatelessPredictor
from asr.heads.transducer import TransducerConfig, TransducerHead
from asr.losses import pruned_rnnt
from asr.losses.pruned_rnnt import rnnt_loss_simple
from asr.losses.pruned_tdt import tdt_loss_pruned, tdt_loss_simple
from asr.losses.rnnt import rnnt_loss
from asr.losses.tdt import tdt_loss
from asr.types import LossOutput

ENC_DIM, VOCAB = 8, 7


def batch():
    enc = torch.randn(3, 9, ENC_DIM)
    enc_lens = torch.tensor([9, 7, 8])
    tokens = torch.randint(1, VOCAB, (3, 4))
    token_lens = torch.tensor([4, 2, 3])
    tokens[1, 2:] = 0
    tokens[2, 3:] = 0
    return enc, enc_lens, tokens, token_lens


def small_head(**kwargs):
    cfg = TransducerConfig(pred_dim=6, joiner_dim=5, lstm_hidden_dim=6, **kwargs)
    return TransducerHead(cfg, ENC_DIM, VOCAB)


@pytest.mark.parametrize("loss", ["full", "pruned", "tdt", "pruned_tdt"])
@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
def test_loss_contract_and_all_parameters_get_gradients(loss, predictor):
    head = small_head(loss=loss, predictor=predictor, predictor_dropout=0.0)
    out = head.loss(*batch())
    assert isinstance(out, LossOutput) and out.num_utterances == 3
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.metrics["num_infinite"] == 0.0
    out.loss.backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_full_head_equals_torchaudio_on_its_joiner():
    head = small_head(loss="full")
    enc, enc_lens, tokens, token_lens = batch()
    out = head.loss(enc, enc_lens, tokens, token_lens)
    logits = head.joiner(enc, head.predict(tokens))
    ref = rnnt_loss(logits, tokens, enc_lens, token_lens)
    torch.testing.assert_close(out.loss, ref)
    assert out.metrics["rnnt_loss"] == pytest.approx(float(ref.detach()), rel=1e-5)


def test_pruned_head_with_wide_band_is_weighted_simple_plus_full():
    head = small_head(loss="pruned", prune_range=5, warm_step=100, lm_only_scale=0.0)
    enc, enc_lens, tokens, token_lens = batch()
    out = head.loss(enc, enc_lens, tokens, token_lens, step=50)
    pred = head.predict(tokens)
    full = rnnt_loss(head.joiner(enc, pred), tokens, enc_lens, token_lens)
    simple = rnnt_loss_simple(
        head.simple_am_proj(enc), head.simple_lm_proj(pred), tokens, enc_lens, token_lens
    )
    simple_scale, pruned_scale = head.loss_scales(50)
    assert (simple_scale, pruned_scale) == pytest.approx((0.75, 0.55))
    torch.testing.assert_close(out.loss, simple_scale * simple + pruned_scale * full)
    assert out.metrics["pruned_loss"] == pytest.approx(float(full.detach()), rel=1e-5)
    assert out.metrics["simple_loss"] == pytest.approx(float(simple.detach()), rel=1e-5)


def test_pruned_tdt_head_with_wide_band_is_weighted_simple_plus_full_tdt():
    head = small_head(loss="pruned_tdt", prune_range=5, warm_step=100, lm_only_scale=0.0,
                      durations=(0, 1, 2), sigma=0.05, omega=0.1)
    assert head.durations == (0, 1, 2) and head.simple_am_proj.out_features == VOCAB + 3
    enc, enc_lens, tokens, token_lens = batch()
    out = head.loss(enc, enc_lens, tokens, token_lens, step=50)
    pred = head.predict(tokens)
    full = tdt_loss(head.joiner(enc, pred), tokens, enc_lens, token_lens, (0, 1, 2), sigma=0.05,
                    omega=0.1)
    simple = tdt_loss_simple(head.simple_am_proj(enc), head.simple_lm_proj(pred), tokens,
                             enc_lens, token_lens, (0, 1, 2))
    simple_scale, pruned_scale = head.loss_scales(50)
    torch.testing.assert_close(out.loss, simple_scale * simple + pruned_scale * full)
    assert out.metrics["pruned_loss"] == pytest.approx(float(full.detach()), rel=1e-5)
    assert out.metrics["simple_loss"] == pytest.approx(float(simple.detach()), rel=1e-5)


def test_pruned_tdt_needs_durations_0_and_1():
    with pytest.raises(ValueError, match="durations 0 and 1"):
        TransducerConfig(loss="pruned_tdt", durations=(1, 2, 3))


def test_warmup_schedule():
    head = small_head(loss="pruned", warm_step=10, simple_loss_scale=0.5)
    assert head.loss_scales(0) == pytest.approx((1.0, 0.1))
    assert head.loss_scales(10) == pytest.approx((0.5, 1.0))
    assert head.loss_scales(1000) == pytest.approx((0.5, 1.0))
    assert head.loss_scales(None) == pytest.approx((0.5, 1.0))  # outside training: warmed up
    assert small_head(loss="pruned", warm_step=0).loss_scales(0) == pytest.approx((0.5, 1.0))


def test_tdt_head_equals_tdt_loss_and_has_duration_logits():
    head = small_head(loss="tdt", durations=(0, 1, 2))
    enc, enc_lens, tokens, token_lens = batch()
    logits = head.joiner(enc, head.predict(tokens))
    assert logits.shape == (3, 9, 5, VOCAB + 3) and head.durations == (0, 1, 2)
    ref = tdt_loss(logits, tokens, enc_lens, token_lens, (0, 1, 2))
    torch.testing.assert_close(head.loss(enc, enc_lens, tokens, token_lens).loss, ref)


def test_tdt_head_passes_sigma_and_omega_to_the_loss():
    head = small_head(loss="tdt", durations=(0, 1, 2), sigma=0.05, omega=0.1)
    enc, enc_lens, tokens, token_lens = batch()
    logits = head.joiner(enc, head.predict(tokens))
    out = head.loss(enc, enc_lens, tokens, token_lens).loss
    ref = tdt_loss(logits, tokens, enc_lens, token_lens, (0, 1, 2), sigma=0.05, omega=0.1)
    torch.testing.assert_close(out, ref)
    assert not torch.allclose(out, tdt_loss(logits, tokens, enc_lens, token_lens, (0, 1, 2)))


@pytest.mark.parametrize(
    "bad", [{"omega": 1.0}, {"omega": -0.1}, {"sigma": -0.05}, {"loss": "tdt", "backend": "k2"}]
)
def test_config_rejects_bad_tdt_options(bad):
    with pytest.raises(ValueError):
        TransducerConfig(**{"loss": "tdt", **bad})


def test_infinite_utterances_are_dropped_and_counted():
    head = small_head(loss="pruned", prune_range=2, warm_step=0)
    enc, _, tokens, token_lens = batch()
    enc_lens = torch.tensor([9, 1, 8])  # 1 frame * (R - 1) < 2 tokens: no band fits
    out = head.loss(enc, enc_lens, tokens, token_lens)
    assert torch.isfinite(out.loss) and out.metrics["num_infinite"] == 1.0


def test_batch_padding_invariance():
    head = small_head(loss="pruned", prune_range=3, warm_step=0)
    enc, enc_lens, tokens, token_lens = batch()
    total = head.loss(enc, enc_lens, tokens, token_lens).loss
    parts = sum(
        head.loss(
            enc[i : i + 1, : enc_lens[i]],
            enc_lens[i : i + 1],
            tokens[i : i + 1, : token_lens[i]],
            token_lens[i : i + 1],
        ).loss
        for i in range(3)
    )
    torch.testing.assert_close(total, parts)


def test_joiner_projection_then_join_equals_forward_and_broadcasts():
    joiner = Joiner(ENC_DIM, 6, 5, VOCAB, num_durations=2, activation="relu")
    enc, pred = torch.randn(2, 4, ENC_DIM), torch.randn(2, 3, 6)
    full = joiner(enc, pred)
    assert full.shape == (2, 4, 3, VOCAB + 2)
    step = joiner.join(joiner.project_encoder(enc[:, 1]), joiner.project_predictor(pred[:, 2]))
    torch.testing.assert_close(step, full[:, 1, 2])


@pytest.mark.parametrize("kind", ["stateless", "lstm"])
def test_incremental_predictor_equals_batch(kind):
    if kind == "stateless":
        predictor = StatelessPredictor(VOCAB, 6, context_size=3)
    else:
        predictor = LstmPredictor(VOCAB, 6, hidden_dim=5, num_layers=2, dropout=0.0)
    tokens = torch.randint(0, VOCAB, (2, 5))
    full, _ = predictor(tokens, predictor.init_state(2, "cpu"))
    state, steps = predictor.init_state(2, "cpu"), []
    for u in range(5):
        out, state = predictor(tokens[:, u : u + 1], state)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


def test_stateless_predictor_sees_only_last_tokens():
    predictor = StatelessPredictor(VOCAB, 4, context_size=2)
    a, _ = predictor(torch.tensor([[3, 1, 5, 2]]), predictor.init_state(1, "cpu"))
    b, _ = predictor(torch.tensor([[6, 4, 5, 2]]), predictor.init_state(1, "cpu"))
    torch.testing.assert_close(a[:, 3], b[:, 3])  # same last two tokens (5, 2)
    assert not torch.allclose(a[:, 1], b[:, 1])


def test_config_from_dict_and_validation():
    cfg = from_dict(TransducerConfig, {"loss": "tdt", "durations": [0, 1, 2], "prune_range": 4})
    assert cfg.durations == (0, 1, 2) and cfg.loss == "tdt"
    with pytest.raises(ValueError, match="prune_range"):
        TransducerConfig(prune_range=1)
    with pytest.raises(ValueError, match="blank_id"):
        TransducerHead(TransducerConfig(blank_id=9), ENC_DIM, VOCAB)


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
def test_float64_head_trains_and_its_predictor_state_follows_the_weights(predictor):
    """A float64 model (the CPU-vs-GPU and exactness checks use them) runs its LSTM predictor
    from a float64 state: the fresh state was float32 whatever the weights, and the LSTM
    raised on the mix."""
    head = TransducerHead(
        TransducerConfig(loss="full", predictor=predictor, pred_dim=6, joiner_dim=5,
                         lstm_hidden_dim=6),
        ENC_DIM, VOCAB,
    ).double()
    enc = torch.randn(2, 5, ENC_DIM, dtype=torch.float64)
    out = head.loss(enc, torch.tensor([5, 4]), torch.tensor([[3, 4], [5, 0]]), torch.tensor([2, 1]))
    assert torch.isfinite(out.loss)
    pred, _ = head.predictor.step(torch.tensor([3, 4]), head.predictor.init_state(2, "cpu"))
    assert pred.dtype == torch.float64


HEAD_LOSSES = [
    {"loss": "full"},
    {"loss": "pruned"},
    {"loss": "tdt", "durations": (0, 1, 2)},
    {"loss": "tdt", "durations": (0, 1, 2), "omega": 0.1},
    {"loss": "pruned_tdt", "durations": (0, 1, 2)},
    {"loss": "pruned_tdt", "durations": (0, 1, 2), "omega": 0.1},
]


def count_vocabulary_checks(monkeypatch) -> list[int]:
    """Replaces ``blank_padded_tokens`` in every ``asr`` module that binds it by a wrapper that
    counts the calls running the vocabulary check (a device sync); returns the counter."""
    original = pruned_rnnt.blank_padded_tokens
    checks = [0]

    def counting(tokens, token_lens, blank_id=0, vocab_size=None, **kwargs):
        checks[0] += vocab_size is not None and not kwargs.get("checked", False)
        return original(tokens, token_lens, blank_id, vocab_size, **kwargs)

    for name, module in list(sys.modules.items()):
        if name.startswith("asr.") and getattr(module, "blank_padded_tokens", None) is original:
            monkeypatch.setattr(module, "blank_padded_tokens", counting)
    return checks


@pytest.mark.parametrize("options", HEAD_LOSSES, ids=lambda o: "-".join(map(str, o.values())))
def test_head_checks_the_tokens_once_per_batch(options, monkeypatch):
    """One vocabulary check (one device sync) per batch: the pruned losses checked the same
    tokens in the simple and the pruned loss, the pruned TDT loss with omega a third time."""
    head = small_head(warm_step=0, **options)
    checks = count_vocabulary_checks(monkeypatch)
    head.loss(*batch()).loss.backward()
    assert checks[0] == 1


@pytest.mark.parametrize("options", HEAD_LOSSES, ids=lambda o: "-".join(map(str, o.values())))
def test_training_step_on_minus_one_padded_tokens_equals_the_blank_padded_one(options):
    """WeNet's ignore id -1 beyond ``token_lens`` trains exactly as blank padding: the head
    pads before the predictor, whose embedding raised an index error on -1."""
    enc, enc_lens, tokens, token_lens = batch()
    padded = tokens.clone()
    padded[1, 2:] = -1
    padded[2, 3:] = -1
    steps = []
    for toks in (tokens, padded):
        torch.manual_seed(1)
        head = small_head(warm_step=0, predictor_dropout=0.0, **options)
        optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
        out = head.loss(enc, enc_lens, toks, token_lens, step=0)
        out.loss.backward()
        optimizer.step()
        steps.append((out.loss.detach(), [p.detach().clone() for p in head.parameters()]))
    (loss, params), (want_loss, want_params) = steps[1], steps[0]
    torch.testing.assert_close(loss, want_loss, rtol=0, atol=0)
    for got, want in zip(params, want_params, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("loss", ["full", "pruned", "tdt", "pruned_tdt"])
def test_head_refuses_a_token_outside_the_vocabulary_naming_it(loss):
    """A token >= V within ``token_lens`` is a ValueError naming it, before the predictor's
    embedding (which raised a bare IndexError)."""
    head = small_head(loss=loss)
    enc, enc_lens, tokens, token_lens = batch()
    tokens[2, 1] = VOCAB
    with pytest.raises(ValueError, match=rf"tokens\[2, 1\] = {VOCAB} is outside the vocabulary"):
        head.loss(enc, enc_lens, tokens, token_lens)


def test_direct_loss_calls_still_check_their_tokens_once(monkeypatch):
    """A loss called without the head checks its own tokens, once: the pruned TDT loss with
    omega checked them again in its RNN-T term."""
    enc, enc_lens, tokens, token_lens = batch()
    logits = torch.randn(3, 9, 2, VOCAB + 3)
    ranges = torch.arange(2).expand(3, 9, 2)
    checks = count_vocabulary_checks(monkeypatch)
    tdt_loss_pruned(logits, tokens, ranges, enc_lens, token_lens, (0, 1, 2), omega=0.1)
    assert checks[0] == 1
    tokens[0, 0] = VOCAB
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tdt_loss_pruned(logits, tokens, ranges, enc_lens, token_lens, (0, 1, 2), omega=0.1)


def test_a_k2_backend_is_checked_by_training_not_by_reading_the_config(monkeypatch):
    """Without k2, ``backend: k2`` still reads and builds (a model trained with k2 is rebuilt
    for decoding anywhere), and :meth:`check_backend`, which training runs first, refuses it
    naming the field; the full loss never runs the backend, a stand-in k2 passes."""
    monkeypatch.setitem(sys.modules, "k2", None)  # makes `import k2` raise ImportError
    cfg = from_dict(TransducerConfig, {"loss": "pruned", "backend": "k2"})
    TransducerHead(cfg, ENC_DIM, VOCAB)
    with pytest.raises(ValueError, match="^backend: backend='k2' needs the k2 package"):
        cfg.check_backend()
    TransducerConfig(loss="full", backend="k2").check_backend()
    monkeypatch.setitem(sys.modules, "k2", types.ModuleType("k2"))
    cfg.check_backend()


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"delay_penalty": -0.01}, "heads.transducer: delay_penalty must be a finite number >= 0"),
        ({"delay_penalty": float("nan")}, "delay_penalty must be a finite number >= 0"),
        ({"loss": "full", "delay_penalty": 0.01, "clamp": 1.0}, "clamp=1.0 needs delay_penalty"),
    ],
)
def test_config_refuses_bad_delay_penalty_naming_the_key(bad, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(TransducerConfig, bad, "heads.transducer")


def test_delay_penalty_starts_after_twice_the_warm_up():
    head = small_head(loss="pruned", warm_step=10, delay_penalty=0.01)
    assert [head.delay_penalty_at(s) for s in (0, 19, 20, None)] == [0.0, 0.0, 0.01, 0.01]
    assert small_head(loss="pruned", warm_step=0, delay_penalty=0.01).delay_penalty_at(0) == 0.01
    assert small_head(loss="pruned", warm_step=10).delay_penalty_at(None) == 0.0


def test_full_head_passes_the_delay_penalty_to_the_loss():
    head = small_head(loss="full", warm_step=5, delay_penalty=0.3)
    enc, enc_lens, tokens, token_lens = batch()
    logits = head.joiner(enc, head.predict(tokens))
    ref = rnnt_loss(logits, tokens, enc_lens, token_lens, delay_penalty=0.3)
    torch.testing.assert_close(head.loss(enc, enc_lens, tokens, token_lens, step=10).loss, ref)
    before = head.loss(enc, enc_lens, tokens, token_lens, step=9).loss  # < 2 * warm_step
    torch.testing.assert_close(before, rnnt_loss(logits, tokens, enc_lens, token_lens))
    assert not torch.allclose(before, ref)


def test_pruned_head_penalises_its_simple_and_pruned_terms():
    torch.manual_seed(0)
    plain = small_head(loss="pruned", warm_step=0)
    penalised = small_head(loss="pruned", warm_step=0, delay_penalty=0.3)
    penalised.load_state_dict(plain.state_dict())
    enc, enc_lens, tokens, token_lens = batch()
    simple = rnnt_loss_simple(
        penalised.simple_am_proj(enc), penalised.simple_lm_proj(penalised.predict(tokens)),
        tokens, enc_lens, token_lens, penalised.cfg.lm_only_scale, delay_penalty=0.3,
    )  # fmt: skip
    a = plain.loss(enc, enc_lens, tokens, token_lens).metrics
    b = penalised.loss(enc, enc_lens, tokens, token_lens).metrics
    assert b["simple_loss"] == pytest.approx(float(simple.detach()), rel=1e-6)
    assert b["simple_loss"] != pytest.approx(a["simple_loss"], rel=1e-4)
    assert b["pruned_loss"] != pytest.approx(a["pruned_loss"], rel=1e-4)


def test_tdt_heads_pass_the_delay_penalty_to_every_term():
    enc, enc_lens, tokens, token_lens = batch()
    tdt = small_head(loss="tdt", durations=(0, 1, 2), omega=0.1, warm_step=0, delay_penalty=0.3)
    logits = tdt.joiner(enc, tdt.predict(tokens))
    ref = tdt_loss(logits, tokens, enc_lens, token_lens, (0, 1, 2), omega=0.1, delay_penalty=0.3)
    torch.testing.assert_close(tdt.loss(enc, enc_lens, tokens, token_lens).loss, ref)
    torch.manual_seed(0)
    plain = small_head(loss="pruned_tdt", durations=(0, 1, 2), warm_step=0)
    penalised = small_head(loss="pruned_tdt", durations=(0, 1, 2), warm_step=0, delay_penalty=0.3)
    penalised.load_state_dict(plain.state_dict())
    a = plain.loss(enc, enc_lens, tokens, token_lens).metrics
    b = penalised.loss(enc, enc_lens, tokens, token_lens).metrics
    assert b["simple_loss"] != pytest.approx(a["simple_loss"], rel=1e-4)
    assert b["pruned_loss"] != pytest.approx(a["pruned_loss"], rel=1e-4)


def test_full_loss_with_a_delay_penalty_runs_the_k2_backend_check(monkeypatch):
    monkeypatch.setitem(sys.modules, "k2", None)
    TransducerConfig(loss="full", backend="k2").check_backend()  # torchaudio: no recursion
    with pytest.raises(ValueError, match="^backend: backend='k2' needs the k2 package"):
        TransducerConfig(loss="full", backend="k2", delay_penalty=0.01).check_backend()
