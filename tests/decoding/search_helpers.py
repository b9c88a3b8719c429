"""Tiny random models and encoder outputs for the searcher tests (imported by name: a module
named conftest is ambiguous once several test folders have one)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from asr.heads.aed import AEDConfig, AEDHead
from asr.heads.cif import CIFConfig, CIFHead
from asr.heads.ctc import CTCConfig, CTCHead
from asr.heads.transducer import TransducerConfig, TransducerHead
from asr.model import ASRModel

ENC_DIM = 16
VOCAB = 7


def make_model(
    transducer: str | None = None,
    ctc: bool = False,
    aed: bool = False,
    cif: bool = False,
    predictor: str = "stateless",
    durations: tuple[int, ...] = (0, 1, 2, 3, 4),
    vocab: int = VOCAB,
    seed: int = 0,
    cif_options: dict | None = None,
) -> ASRModel:
    """ASRModel with an identity encoder and the requested heads (eval mode, seeded);
    ``cif_options`` are more :class:`CIFConfig` fields (``segments="ctc"`` needs ``ctc``)."""
    torch.manual_seed(seed)
    heads: dict[str, nn.Module] = {}
    if transducer is not None:
        cfg = TransducerConfig(
            loss=transducer,
            predictor=predictor,
            pred_dim=16,
            joiner_dim=16,
            lstm_hidden_dim=16,
            predictor_dropout=0.0,
            durations=durations,
        )
        heads["transducer"] = TransducerHead(cfg, ENC_DIM, vocab)
    if ctc:
        heads["ctc"] = CTCHead(CTCConfig(), ENC_DIM, vocab)
    if aed:
        cfg = AEDConfig(d_model=16, num_heads=2, num_layers=2, ffn_dim=32, dropout=0.0)
        heads["aed"] = AEDHead(cfg, ENC_DIM, vocab)
    if cif:
        cfg = CIFConfig(
            d_model=16, num_heads=2, num_layers=1, ffn_dim=32, dropout=0.0, **(cif_options or {})
        )
        heads["cif"] = CIFHead(cfg, ENC_DIM, vocab)
    return ASRModel(nn.Identity(), heads, {name: 1.0 for name in heads}).eval()


def encoder_output(lens: list[int], seed: int = 1, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Random (B, max(lens), ENC_DIM) zero-padded encoder output and its lengths."""
    generator = torch.Generator().manual_seed(seed)
    enc = torch.randn(len(lens), max(lens), ENC_DIM, generator=generator) * scale
    enc_lens = torch.tensor(lens)
    for b, n in enumerate(lens):
        enc[b, n:] = 0.0
    return enc, enc_lens


def assert_frames_valid(nbests, enc_lens: Tensor) -> None:
    """Timestamps non-decreasing, one per token, inside [0, enc_len)."""
    for hyps, length in zip(nbests, enc_lens.tolist()):
        for hyp in hyps:
            assert len(hyp.frames) == len(hyp.tokens)
            assert list(hyp.frames) == sorted(hyp.frames)
            assert all(0 <= frame < length for frame in hyp.frames)


def assert_same_hypotheses(got, expected) -> None:
    """Hypotheses (lists of them) with the same tokens and frames, and the same scores up to
    float rounding: a joiner projection of a chunk's few frames may round in the last bit
    unlike that of all frames (a BLAS sums its products in an order that can depend on the
    number of rows; seen on an AVX-512 AMD EPYC), which no search step should magnify."""
    assert len(got) == len(expected), (got, expected)
    for g, e in zip(got, expected):
        assert (g.tokens, g.frames) == (e.tokens, e.frames), (g, e)
        assert g.score == pytest.approx(e.score, rel=1e-6, abs=1e-4), (g, e)
