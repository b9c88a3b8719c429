"""CTC head: log-probs, loss contract, impossible-utterance count, overfitting."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from asr.config import from_dict
from asr.heads.ctc import CTCConfig, CTCHead


def test_log_probs_normalised_float32_and_forward():
    head = CTCHead(CTCConfig(), enc_dim=8, vocab_size=6)
    enc = torch.randn(2, 5, 8)
    log_probs = head.log_probs(enc)
    assert log_probs.shape == (2, 5, 6) and log_probs.dtype == torch.float32
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(head(enc), log_probs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head.log_probs(enc).dtype == torch.float32


def test_loss_is_sum_of_torch_ctc_and_counts_impossible(caplog):
    head = CTCHead(CTCConfig(), enc_dim=8, vocab_size=6)
    enc = torch.randn(3, 6, 8)
    enc_lens = torch.tensor([6, 4, 2])
    tokens = torch.tensor([[1, 2, 3], [4, 4, 0], [5, 5, 5]])  # last needs 5 frames, has 2
    token_lens = torch.tensor([3, 2, 3])
    with caplog.at_level(logging.WARNING):
        out = head.loss(enc, enc_lens, tokens, token_lens)
    assert "1 of 3 utterances" in caplog.text
    lp = head.log_probs(enc).transpose(0, 1)
    reference = F.ctc_loss(lp[:, :2], tokens[:2], enc_lens[:2], token_lens[:2], reduction="sum")
    torch.testing.assert_close(out.loss, reference)
    assert out.num_utterances == 3
    assert out.metrics == {"ctc_loss": pytest.approx(reference.item()), "num_infinite": 1.0}
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


def test_padding_invariance():
    head = CTCHead(CTCConfig(), enc_dim=8, vocab_size=6)
    enc = torch.randn(2, 7, 8)
    enc_lens = torch.tensor([7, 4])
    tokens = torch.tensor([[1, 2, 3], [4, 0, 0]])
    token_lens = torch.tensor([3, 1])
    out = head.loss(enc, enc_lens, tokens, token_lens)
    alone = head.loss(enc[1:, :4], enc_lens[1:], tokens[1:, :1], token_lens[1:])
    first = head.loss(enc[:1], enc_lens[:1], tokens[:1], token_lens[:1])
    torch.testing.assert_close(out.loss, first.loss + alone.loss)


def test_overfits_tiny_batch():
    feats = torch.randn(2, 12, 8)
    feat_lens = torch.tensor([12, 9])
    tokens = torch.tensor([[3, 4, 4, 5], [6, 2, 0, 0]])
    token_lens = torch.tensor([4, 2])
    encoder = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 16))
    head = CTCHead(from_dict(CTCConfig, {"dropout": 0.0}), enc_dim=16, vocab_size=7)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-2)
    first = None
    for _ in range(200):
        loss = head.loss(encoder(feats), feat_lens, tokens, token_lens).loss
        first = loss.item() if first is None else first
        if loss.item() < 0.02 * first:  # a little past the 90% bar, so greedy is right too
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first, (first, loss.item())
    best = head.log_probs(encoder(feats))[0].argmax(-1).tolist()
    collapsed = [s for i, s in enumerate(best) if s != 0 and (i == 0 or best[i - 1] != s)]
    assert collapsed == [3, 4, 4, 5]


def test_config_validation():
    with pytest.raises(ValueError, match="dropout"):
        CTCConfig(dropout=1.0)
    with pytest.raises(ValueError, match="blank_id=9"):
        CTCHead(CTCConfig(blank_id=9), 4, 5)


def test_counts_every_impossible_utterance_and_uses_its_blank_id():
    head = CTCHead(CTCConfig(blank_id=5), enc_dim=8, vocab_size=6)
    enc = torch.randn(3, 4, 8)
    enc_lens = torch.tensor([4, 2, 3])
    tokens = torch.tensor([[1, 0, 2], [1, 2, 3], [4, 4, 4]])  # the last two cannot be aligned
    token_lens = torch.tensor([3, 3, 3])
    out = head.loss(enc, enc_lens, tokens, token_lens)
    assert out.metrics["num_infinite"] == 2.0
    lp = head.log_probs(enc).transpose(0, 1)
    reference = F.ctc_loss(lp[:, :1], tokens[:1], enc_lens[:1], token_lens[:1], blank=5,
                           reduction="sum")
    torch.testing.assert_close(out.loss, reference)
    with pytest.raises(ValueError, match="blank_id=6"):
        CTCHead(CTCConfig(blank_id=6), 4, 6)


def test_dropout_applies_in_training_only():
    head = CTCHead(CTCConfig(dropout=0.5), enc_dim=8, vocab_size=6)
    enc = torch.randn(2, 5, 8)
    plain = head.output(enc)
    assert not torch.equal(head.logits(enc), plain)
    head.eval()
    assert torch.equal(head.logits(enc), plain)
