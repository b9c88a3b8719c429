"""AED head: incremental == teacher-forced decoding, loss oracles, label smoothing, overfitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from asr.config import from_dict
from asr.heads.aed import AEDConfig, AEDHead
from asr.heads.decoder_layers import lengths_to_mask
from asr.losses.label_smoothing import label_smoothing_loss
from asr.state import select_states

VOCAB = 11


def _tiny_cfg(**kwargs) -> AEDConfig:
    base = dict(d_model=16, num_heads=2, num_layers=2, ffn_dim=32, dropout=0.0, num_r2l_layers=1)
    base.update(kwargs)
    return AEDConfig(**base)


def _batch():
    enc = torch.randn(3, 9, 12)
    enc_lens = torch.tensor([9, 6, 3])
    token_lens = torch.tensor([4, 2, 3])
    tokens = torch.randint(2, VOCAB, (3, 4)) * (torch.arange(4)[None] < token_lens[:, None])
    return enc, enc_lens, tokens, token_lens


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_incremental_steps_equal_teacher_forced(positional):
    head = AEDHead(_tiny_cfg(positional=positional), enc_dim=12, vocab_size=VOCAB).eval()
    enc, enc_lens, tokens, token_lens = _batch()
    inputs, _ = head._teacher_forcing(tokens, token_lens)
    mask = lengths_to_mask(enc_lens, enc.shape[1])
    with torch.no_grad():
        full = torch.log_softmax(head.decoder(inputs, head.memory_proj(enc), mask), dim=-1)
        cache = head.init_cache(3, enc.device)
        assert cache.num_positions == 0
        for position in range(inputs.shape[1]):
            log_probs, cache = head.step(inputs[:, position], cache, enc, mask)
            assert cache.num_positions == position + 1
            torch.testing.assert_close(log_probs, full[:, position], atol=1e-5, rtol=0)


def test_cache_select_reorders_hypotheses():
    head = AEDHead(_tiny_cfg(), enc_dim=12, vocab_size=VOCAB).eval()
    enc, enc_lens, tokens, token_lens = _batch()
    mask = lengths_to_mask(enc_lens, enc.shape[1])
    with torch.no_grad():
        cache = head.init_cache(3, enc.device)
        _, cache = head.step(torch.ones(3, dtype=torch.long), cache, enc, mask)
        _, cache = head.step(tokens[:, 0], cache, enc, mask)
        order = torch.tensor([2, 0, 0])
        picked, _ = head.step(tokens[order, 1], cache.select(order), enc[order], mask[order])
        direct, _ = head.step(tokens[:, 1], cache, enc, mask)
    torch.testing.assert_close(picked, direct[order], atol=1e-6, rtol=0)
    assert cache.select(order).keys.shape[1] == 3
    generic = select_states(cache, order)  # the generic State helpers see the batch dim
    torch.testing.assert_close(generic.keys, cache.select(order).keys)
    torch.testing.assert_close(generic.values, cache.select(order).values)


def test_loss_without_smoothing_is_minus_sequence_scores_and_padding_invariant():
    head = AEDHead(_tiny_cfg(label_smoothing=0.0), enc_dim=12, vocab_size=VOCAB).eval()
    enc, enc_lens, tokens, token_lens = _batch()
    out = head.loss(enc, enc_lens, tokens, token_lens)
    hyps = [tokens[i, : token_lens[i]].tolist() for i in range(3)]
    scores = head.score_sequences(enc, enc_lens, hyps)
    torch.testing.assert_close(out.loss, -scores.sum(), rtol=1e-5, atol=1e-5)
    # one utterance at a time, unpadded, step by step: same scores
    for i, hyp in enumerate(hyps):
        e = enc[i : i + 1, : enc_lens[i]]
        m = torch.ones(1, int(enc_lens[i]), dtype=torch.bool)
        cache, total, previous = head.init_cache(1, "cpu"), 0.0, head.cfg.sos_id
        for token in [*hyp, head.cfg.eos_id]:
            log_probs, cache = head.step(torch.tensor([previous]), cache, e, m)
            total += log_probs[0, token].item()
            previous = token
        assert abs(total - scores[i].item()) < 1e-4
    assert out.metrics["num_tokens"] == float((token_lens + 1).sum())


@pytest.mark.parametrize("reverse_weight", [0.0, 0.3])
def test_loss_reads_no_padding_value_and_names_a_token_outside_the_vocabulary(reverse_weight):
    """WeNet pads targets with -1 (its ignore id): the loss is that of 0 padding, as in the CTC
    and transducer heads; a token outside the vocabulary is a ValueError naming it."""
    torch.manual_seed(0)
    head = AEDHead(_tiny_cfg(reverse_weight=reverse_weight), 12, VOCAB).eval()
    enc, enc_lens, tokens, token_lens = _batch()
    padded = torch.where(lengths_to_mask(token_lens, tokens.shape[1]), tokens, -1)
    expected = head.loss(enc, enc_lens, tokens, token_lens).loss
    torch.testing.assert_close(head.loss(enc, enc_lens, padded, token_lens).loss, expected)
    tokens[1, 1] = VOCAB
    with pytest.raises(ValueError, match=rf"tokens\[1, 1\] = {VOCAB} is outside"):
        head.loss(enc, enc_lens, tokens, token_lens)


def test_reverse_decoder_mixes_scores():
    head = AEDHead(_tiny_cfg(reverse_weight=0.3, label_smoothing=0.0), 12, VOCAB).eval()
    enc, enc_lens, tokens, token_lens = _batch()
    hyps = [tokens[i, : token_lens[i]].tolist() for i in range(3)]
    scores = head.score_sequences(enc, enc_lens, hyps)
    mask = lengths_to_mask(enc_lens, enc.shape[1])
    memory = head.memory_proj(enc)
    for i, hyp in enumerate(hyps):
        parts = []
        for decoder, seq in ((head.decoder, hyp), (head.r2l_decoder, hyp[::-1])):
            inputs = torch.tensor([[1, *seq]])
            targets = torch.tensor([*seq, 1])
            lp = torch.log_softmax(decoder(inputs, memory[i : i + 1], mask[i : i + 1]), -1)[0]
            parts.append(lp[torch.arange(len(targets)), targets].sum())
        expected = 0.7 * parts[0] + 0.3 * parts[1]
        torch.testing.assert_close(scores[i], expected, atol=1e-5, rtol=1e-5)
    out = head.loss(enc, enc_lens, tokens, token_lens)
    torch.testing.assert_close(out.loss, -scores.sum(), rtol=1e-5, atol=1e-5)
    assert set(out.metrics) >= {"loss_l2r", "loss_r2l", "num_correct", "num_tokens"}
    # a shared (1, T, D) encoder output broadcasts over hypotheses
    shared = head.score_sequences(enc[:1], enc_lens[:1], [hyps[0], hyps[1]])
    same = head.score_sequences(enc[[0, 0]], enc_lens[[0, 0]], [hyps[0], hyps[1]])
    torch.testing.assert_close(shared, same)


def test_reverse_within_length():
    tokens = torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0], [8, 0, 0, 0]])
    rev = AEDHead._reverse(tokens, torch.tensor([3, 2, 0]))
    assert rev.tolist() == [[5, 4, 3, 0], [7, 6, 0, 0], [0, 0, 0, 0]]


def test_label_smoothing_matches_explicit_kl_and_cross_entropy():
    logits = torch.randn(5, 7, dtype=torch.float64)
    targets = torch.tensor([0, 3, 6, 2, 2])
    eps = 0.2
    dist = torch.full((5, 7), eps / 6, dtype=torch.float64)
    dist[torch.arange(5), targets] = 1 - eps
    expected = F.kl_div(torch.log_softmax(logits, -1), dist, reduction="none").sum(-1)
    got = label_smoothing_loss(logits, targets, eps)
    assert got.dtype == torch.float64  # float64 logits keep float64 (they were cut to float32)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
    plain = F.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(label_smoothing_loss(logits, targets), plain)
    for dtype in (torch.float32, torch.bfloat16):  # computed in float32 below float64
        low = label_smoothing_loss(logits.to(dtype), targets, eps)
        assert low.dtype == torch.float32
        torch.testing.assert_close(low.double(), expected, atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="smoothing"):
        label_smoothing_loss(logits, targets, 1.0)


def test_overfits_tiny_batch():
    feats = torch.randn(2, 10, 8)
    feat_lens = torch.tensor([10, 7])
    tokens = torch.tensor([[3, 4, 5, 3], [6, 7, 0, 0]])
    token_lens = torch.tensor([4, 2])
    encoder = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh())
    head = AEDHead(_tiny_cfg(label_smoothing=0.1, reverse_weight=0.3), 16, VOCAB)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    first = None
    for _ in range(200):
        loss = head.loss(encoder(feats), feat_lens, tokens, token_lens).loss
        first = loss.item() if first is None else first
        if loss.item() < 0.1 * first:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first, (first, loss.item())


def test_config_from_dict_and_validation():
    cfg = from_dict(AEDConfig, {"d_model": 32, "positional": "learned", "reverse_weight": 0.3})
    assert cfg.positional == "learned" and cfg.reverse_weight == 0.3
    with pytest.raises(ValueError, match="reverse_weight"):
        AEDConfig(reverse_weight=1.0)
    with pytest.raises(ValueError, match="sos_id"):
        AEDHead(_tiny_cfg(sos_id=0), 12, VOCAB)
    head = AEDHead(_tiny_cfg(positional="learned", max_len=3), 12, VOCAB)
    with pytest.raises(ValueError, match="max_len=3"):
        head.decoder(
            torch.ones(1, 4, dtype=torch.long),
            torch.randn(1, 2, 16),
            torch.ones(1, 2, dtype=torch.bool),
        )


@pytest.mark.parametrize("reverse_weight", [0.0, 0.3])
def test_a_target_longer_than_the_learned_positions_is_left_out_of_the_loss(
    reverse_weight, caplog
):
    """With learned positions, a target of ``max_len`` tokens or more (``<sos>`` first, so at
    least ``max_len + 1`` positions) raised "position 4 exceeds max_len=4" and stopped training
    or validation (dev cuts are not filtered by token count). It is now left out of the AED
    loss, counted and named in one warning with the option, as an utterance without frames
    is; the other utterances' loss is theirs alone."""
    torch.manual_seed(0)
    head = AEDHead(
        _tiny_cfg(positional="learned", max_len=4, reverse_weight=reverse_weight), 12, VOCAB
    ).eval()
    enc = torch.randn(3, 9, 12)
    enc_lens = torch.tensor([9, 6, 3])
    token_lens = torch.tensor([3, 4, 2])  # 3 tokens fit: <sos> + 3 = 4 positions; 4 do not
    tokens = torch.randint(2, VOCAB, (3, 4)) * (torch.arange(4)[None] < token_lens[:, None])
    with caplog.at_level("WARNING", logger="asr.heads.decoder_layers"):
        out = head.loss(enc, enc_lens, tokens, token_lens)
    keep = torch.tensor([0, 2])
    alone = head.loss(enc[keep], enc_lens[keep], tokens[keep, :3], token_lens[keep])
    torch.testing.assert_close(out.loss, alone.loss)
    assert out.metrics["num_tokens"] == float(3 + 1 + 2 + 1)
    assert out.metrics["num_too_long"] == 1.0 and out.metrics["num_infinite"] == 0.0
    assert alone.metrics["num_too_long"] == 0.0
    message = caplog.text
    assert "AED: 1 of 3 utterances" in message and "heads.aed.max_len" in message
    assert message.count("heads.aed.max_len") == 1
    out.loss.backward()  # the loss trains the others


@pytest.mark.parametrize("reverse_weight", [0.0, 0.3])
def test_a_hypothesis_longer_than_the_learned_positions_scores_minus_inf(reverse_weight):
    """score_sequences of a hypothesis of ``max_len`` tokens or more raised "position 4 exceeds
    max_len=4" (attention rescoring passes it the first pass's n-best, which has no such
    limit) and stopped ``asr decode``. It now scores -inf, as a hypothesis the decoder can
    neither produce nor score; the others in the batch score as they do alone. Sinusoidal
    positions have no limit."""
    torch.manual_seed(0)
    head = AEDHead(
        _tiny_cfg(positional="learned", max_len=4, reverse_weight=reverse_weight), 12, VOCAB
    ).eval()
    enc, enc_lens = torch.randn(1, 9, 12), torch.tensor([9])
    hyps = [[3, 4, 5, 6, 7], [3, 4, 5], [2, 3, 4, 5]]
    with torch.no_grad():
        scores = head.score_sequences(enc, enc_lens, hyps)
        alone = head.score_sequences(enc, enc_lens, [[3, 4, 5]])
        assert head.score_sequences(enc, enc_lens, [[3, 4, 5, 6, 7]]).tolist() == [-float("inf")]
    assert scores[0] == scores[2] == -float("inf")
    torch.testing.assert_close(scores[1:2], alone)
    sinusoidal = AEDHead(_tiny_cfg(reverse_weight=reverse_weight), 12, VOCAB).eval()
    with torch.no_grad():
        assert torch.isfinite(sinusoidal.score_sequences(enc, enc_lens, hyps)).all()
