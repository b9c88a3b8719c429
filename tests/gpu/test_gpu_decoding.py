"""Batched searches on the device under test == on the CPU, and streaming == offline there.

Every searcher of two random models (transducer RNN-T + CTC + AED + CIF heads; TDT + CTC) decodes
the same ragged batch of encoder output on both devices. The models run in float64, so rounding
differences between devices (~1e-16) cannot flip a decision: tokens, frames and n-best order
must be identical and scores equal to 1e-9. Then each streaming searcher (CTC, transducer and TDT
greedy) fed chunk by chunk on the device equals the offline search.

Sizes on CUDA: B=4 utterances of up to 40 encoder frames, D=J=P=256, V=500 (the transducer's
blank bias raised so that it emits about one token every 2-4 frames, not several per frame);
tiny in the dry run.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from asr.decoding import SearchConfig, available_searchers, build_searcher, build_streaming_searcher
from asr.decoding.registry import STREAMING_SEARCHER_NAMES
from asr.heads.aed import AEDConfig, AEDHead
from asr.heads.cif import CIFConfig, CIFHead
from asr.heads.ctc import CTCConfig, CTCHead
from asr.heads.transducer import TransducerConfig, TransducerHead
from asr.model import ASRModel

pytestmark = pytest.mark.gpu

MODELS = {"rnnt": ("pruned", True, True, True), "tdt": ("tdt", True, False, False)}
SEARCH = SearchConfig(beam_size=4, nbest=2)


def _sizes(full_size: bool) -> dict:
    if full_size:
        return dict(dim=256, vocab=500, layers=2, lens=[40, 27, 33, 12],
                    blank_bias={"rnnt": 1.0, "tdt": 0.5})
    return dict(dim=16, vocab=9, layers=1, lens=[14, 9, 12], blank_bias={"rnnt": 0.3, "tdt": 0.0})


def _model(kind: str, s: dict) -> ASRModel:
    """A random float64 model of identity encoder and the heads of ``MODELS[kind]``, eval mode,
    with the transducer's blank and the TDT durations biased as trained models are."""
    loss, ctc, aed, cif = MODELS[kind]
    torch.manual_seed(0)
    dim, vocab = s["dim"], s["vocab"]
    cfg = TransducerConfig(loss=loss, pred_dim=dim, joiner_dim=dim, durations=(0, 1, 2, 3, 4))
    heads: dict[str, nn.Module] = {"transducer": TransducerHead(cfg, dim, vocab)}
    if ctc:
        heads["ctc"] = CTCHead(CTCConfig(), dim, vocab)
    if aed:
        heads["aed"] = AEDHead(AEDConfig(d_model=dim, num_heads=4, num_layers=s["layers"],
                                         ffn_dim=2 * dim, dropout=0.0), dim, vocab)
    if cif:
        heads["cif"] = CIFHead(CIFConfig(d_model=dim, num_heads=4, num_layers=s["layers"],
                                         ffn_dim=2 * dim, dropout=0.0), dim, vocab)
    model = ASRModel(nn.Identity(), heads, {name: 1.0 for name in heads}).double().eval()
    with torch.no_grad():
        bias = model.heads["transducer"].joiner.output.bias
        bias[0] += s["blank_bias"][kind]  # blank: fewer emissions than one per frame
        if loss == "tdt":
            bias[vocab:] += torch.tensor([0.0, 0.5, 1.5, 2.0, 2.0], dtype=bias.dtype)
    return model


def _encoder_output(s: dict, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lens = torch.tensor(s["lens"])
    enc = torch.randn(len(lens), int(lens.max()), s["dim"], generator=gen, dtype=torch.float64)
    return enc * (torch.arange(enc.shape[1])[None] < lens[:, None])[:, :, None], lens


def _same(got, expected, what: str, score_rel: float = 1e-9) -> None:
    assert len(got) == len(expected), what
    for b, (hyps, refs) in enumerate(zip(got, expected)):
        assert [h.tokens for h in hyps] == [r.tokens for r in refs], f"{what} utterance {b}"
        assert [h.frames for h in hyps] == [r.frames for r in refs], f"{what} utterance {b}"
        for h, r in zip(hyps, refs):
            assert h.score == pytest.approx(r.score, rel=score_rel, abs=score_rel), f"{what} {b}"


@pytest.mark.parametrize("kind", list(MODELS))
def test_every_searcher_on_device_equals_cpu(device, full_size, record, kind):
    s = _sizes(full_size)
    model = _model(kind, s)
    model_dev = copy.deepcopy(model).to(device)
    enc, lens = _encoder_output(s)
    enc_dev, lens_dev = enc.to(device), lens.to(device)
    names = available_searchers(model)
    assert {"ctc_greedy", "ctc_prefix_beam"} <= set(names)
    emitted = {}
    for name in names:
        expected = build_searcher(name, model, SEARCH)(enc, lens)
        got = build_searcher(name, model_dev, SEARCH)(enc_dev, lens_dev)
        _same(got, expected, name)
        emitted[name] = sum(len(hyps[0].tokens) for hyps in expected)
    assert min(emitted.values()) > 0, emitted
    record(model=kind, tokens_per_searcher=emitted)


def _run_chunks(searcher, enc, enc_lens, chunk_sizes):
    state = searcher.init_state(enc.shape[0], enc.device)
    start, index = 0, 0
    while start < enc.shape[1]:
        size = chunk_sizes[index % len(chunk_sizes)]
        chunk = enc[:, start : start + size]
        chunk_lens = (enc_lens - start).clamp(min=0, max=chunk.shape[1])
        state = searcher.step(chunk, chunk_lens, state)
        start, index = start + size, index + 1
    return searcher.finalize(state)


@pytest.mark.parametrize("kind", list(MODELS))
def test_streaming_searchers_on_device_equal_offline(device, full_size, kind):
    s = _sizes(full_size)
    model = _model(kind, s).to(device)
    enc, lens = _encoder_output(s, seed=2)
    enc, lens = enc.to(device), lens.to(device)
    names = [n for n in available_searchers(model) if n in STREAMING_SEARCHER_NAMES]
    # CTC greedy, the transducer's greedy and, where the model has a CIF head, CIF greedy
    assert {"ctc_greedy", f"{'tdt' if kind == 'tdt' else 'transducer'}_greedy"} <= set(names), names
    for name in names:
        offline = build_searcher(name, model, SEARCH)(enc, lens)
        streaming = build_streaming_searcher(name, model, SEARCH)
        for chunk_sizes in ([1], [8], [4, 2, 5]):
            got = _run_chunks(streaming, enc, lens, chunk_sizes)
            # A streaming state keeps its scores in float32 (TokenBuffer).
            _same([[h] for h in got], [hyps[:1] for hyps in offline], f"{name} {chunk_sizes}",
                  score_rel=1e-5)
