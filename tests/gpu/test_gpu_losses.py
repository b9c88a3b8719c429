"""Losses and their gradients on the device under test == on the CPU.

* the transducer head's pruned RNN-T (simple loss, pruning bounds, Triton recursion on CUDA),
  TDT and pruned TDT losses, end to end through predictor and joiner, in float64, where the
  pruning bounds (an argmax) cannot flip between devices and the results must agree to rounding;
* float32: the simple loss and its occupations, the pruned loss on given bounds, the TDT loss,
  torchaudio's full RNN-T loss and CTC, each at most a few times farther from a float64 CPU
  reference than the CPU's own float32 result (:func:`gpu_helpers.assert_as_accurate`).

Sizes on CUDA: B=8, T=120, U=25, V=500; tiny in the dry run.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from gpu_helpers import (
    assert_as_accurate,
    assert_grads_close,
    assert_scaled_close,
    ragged_lengths,
    random_tokens,
)

from asr.heads.transducer import TransducerConfig, TransducerHead
from asr.losses.ctc import ctc_loss
from asr.losses.pruned_rnnt import get_pruning_ranges, rnnt_loss_pruned, rnnt_loss_simple
from asr.losses.rnnt import rnnt_loss
from asr.losses.tdt import tdt_loss

pytestmark = pytest.mark.gpu

DURATIONS = (0, 1, 2, 3, 4)
EXACT = 1e-9  # float64 on two devices: scaled differences of rounding only


def _inputs(full_size: bool, seed: int):
    if full_size:
        s = dict(batch=8, frames=120, tokens=25, vocab=500, dim=64)
    else:
        s = dict(batch=3, frames=16, tokens=4, vocab=11, dim=8)
    gen = torch.Generator().manual_seed(seed)
    frame_lens = ragged_lengths(s["batch"], s["frames"], s["frames"] // 2, gen)
    token_lens = ragged_lengths(s["batch"], s["tokens"], 1, gen)
    tokens = random_tokens(token_lens, s["vocab"], gen, first=1)
    return s, gen, frame_lens, token_lens, tokens


def _run(fn, inputs: list[torch.Tensor], dev, dtype) -> list[torch.Tensor]:
    """``fn(*leaves, dev)`` on copies of ``inputs`` as ``dtype`` leaves on ``dev``; returns the
    (scalar) result followed by the gradient of each input."""
    leaves = [x.to(dev, dtype).detach().requires_grad_(True) for x in inputs]
    loss = fn(*leaves, dev)
    loss.backward()
    return [loss.detach()] + [x.grad for x in leaves]


def _compare32(fn, inputs, device, names) -> dict[str, float]:
    """float32 on the device vs float32 and float64 on the CPU (see the module docstring)."""
    cpu64 = _run(fn, inputs, "cpu", torch.float64)
    cpu32 = _run(fn, inputs, "cpu", torch.float32)
    got = _run(fn, inputs, device, torch.float32)
    assert got[0].dtype == torch.float32
    return {
        name: assert_as_accurate(g, c32, c64, name)
        for name, g, c32, c64 in zip(names, got, cpu32, cpu64)
    }


@pytest.mark.parametrize("loss", ["pruned", "tdt", "pruned_tdt"])
def test_transducer_head_loss_and_gradients_equal_cpu(device, full_size, record, loss):
    s, gen, frame_lens, token_lens, tokens = _inputs(full_size, seed=0)
    cfg = TransducerConfig(loss=loss, pred_dim=s["dim"], joiner_dim=s["dim"], warm_step=0,
                           durations=DURATIONS)
    torch.manual_seed(0)
    head = TransducerHead(cfg, s["dim"], s["vocab"]).double()
    head_dev = copy.deepcopy(head).to(device)
    enc = torch.randn(s["batch"], s["frames"], s["dim"], generator=gen, dtype=torch.float64)
    enc_dev = enc.to(device).requires_grad_(True)
    enc.requires_grad_(True)

    out = head.loss(enc, frame_lens, tokens, token_lens)
    out_dev = head_dev.loss(enc_dev, frame_lens.to(device), tokens.to(device),
                            token_lens.to(device))
    out.loss.backward()
    out_dev.loss.backward()
    assert out_dev.loss.dtype == torch.float64
    assert out_dev.metrics["num_infinite"] == out.metrics["num_infinite"] == 0
    diffs = {
        "loss": assert_scaled_close(out_dev.loss, out.loss, EXACT, "loss"),
        "grad_enc": assert_scaled_close(enc_dev.grad, enc.grad, EXACT, "grad enc"),
        "grad_params": assert_grads_close(head_dev, head, EXACT),
    }
    for key in ("simple_loss", "pruned_loss"):
        if key in out.metrics:
            assert out_dev.metrics[key] == pytest.approx(out.metrics[key], rel=EXACT)
    record(head_loss=loss, dtype="float64", **diffs)


def test_pruned_loss_float32_pieces_equal_cpu(device, full_size, record):
    """Simple loss and occupations; the pruning bounds from the same occupations on both
    devices; the pruned loss on those bounds. (float32 occupations from two devices could move
    an argmax between nearly equal windows: the head test covers the chain in float64.)"""
    s, gen, frame_lens, token_lens, tokens = _inputs(full_size, seed=1)
    am = torch.randn(s["batch"], s["frames"], s["vocab"], generator=gen)
    lm = torch.randn(s["batch"], s["tokens"] + 1, s["vocab"], generator=gen)

    def simple(a, b, dev):
        return rnnt_loss_simple(a, b, tokens.to(dev), frame_lens.to(dev), token_lens.to(dev),
                                0.25)

    diffs = _compare32(simple, [am, lm], device, ("simple", "grad_am", "grad_lm"))

    def occupations(dev, dtype):
        _, grads = rnnt_loss_simple(am.to(dev, dtype), lm.to(dev, dtype), tokens.to(dev),
                                    frame_lens.to(dev), token_lens.to(dev), 0.25,
                                    return_grad=True)
        return grads

    cpu64, cpu32 = occupations("cpu", torch.float64), occupations("cpu", torch.float32)
    got = occupations(device, torch.float32)
    for name, g, c32, c64 in zip(("px_occupation", "py_occupation"), got, cpu32, cpu64):
        diffs[name] = assert_as_accurate(g, c32, c64, name)

    ranges = get_pruning_ranges(*cpu64, frame_lens, token_lens, 5)
    ranges_dev = get_pruning_ranges(cpu64[0].to(device), cpu64[1].to(device),
                                    frame_lens.to(device), token_lens.to(device), 5)
    assert torch.equal(ranges_dev.cpu(), ranges), "pruning bounds differ between devices"
    logits = torch.randn(*ranges.shape, s["vocab"], generator=gen)

    def pruned(x, dev):
        return rnnt_loss_pruned(x, tokens.to(dev), ranges.to(dev), frame_lens.to(dev),
                                token_lens.to(dev))

    diffs.update(_compare32(pruned, [logits], device, ("pruned", "grad_band_logits")))
    record(dtype="float32", **diffs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tdt_loss_equals_cpu(device, full_size, record, dtype):
    s, gen, frame_lens, token_lens, tokens = _inputs(full_size, seed=2)
    shape = (s["batch"], s["frames"], s["tokens"] + 1, s["vocab"] + len(DURATIONS))
    logits = torch.randn(*shape, generator=gen)

    def fn(x, dev):
        return tdt_loss(x, tokens.to(dev), frame_lens.to(dev), token_lens.to(dev), DURATIONS)

    if dtype == torch.float32:
        diffs = _compare32(fn, [logits], device, ("loss", "grad"))
    else:
        ref = _run(fn, [logits], "cpu", dtype)
        got = _run(fn, [logits], device, dtype)
        diffs = {name: assert_scaled_close(g, r, EXACT, name)
                 for name, g, r in zip(("loss", "grad"), got, ref)}
    record(dtype=str(dtype).split(".")[-1], **diffs)


def test_torchaudio_rnnt_loss_equals_cpu(device, full_size, record):
    """torchaudio computes in float32 only; the float64 reference is our recursion on the whole
    lattice (the pruned loss with a band of all U + 1 positions is the full loss)."""
    s, gen, frame_lens, token_lens, tokens = _inputs(full_size, seed=3)
    logits = torch.randn(s["batch"], s["frames"], s["tokens"] + 1, s["vocab"], generator=gen)

    def full(x, dev):
        return rnnt_loss(x, tokens.to(dev), frame_lens.to(dev), token_lens.to(dev))

    def reference(x, dev):
        band = torch.arange(x.shape[2], device=dev).expand(*x.shape[:3])
        return rnnt_loss_pruned(x, tokens.to(dev), band, frame_lens.to(dev),
                                token_lens.to(dev), backend="torch")

    cpu64 = _run(reference, [logits], "cpu", torch.float64)
    cpu32 = _run(full, [logits], "cpu", torch.float32)
    got = _run(full, [logits], device, torch.float32)
    record(**{name: assert_as_accurate(g, c32, c64, name)
              for name, g, c32, c64 in zip(("loss", "grad"), got, cpu32, cpu64)})


def test_ctc_loss_equals_cpu(device, full_size, record):
    s, gen, frame_lens, token_lens, tokens = _inputs(full_size, seed=4)
    logits = torch.randn(s["batch"], s["frames"], s["vocab"], generator=gen)

    def ours(x, dev):  # run on float32 inputs only: computed in float32
        losses, infeasible = ctc_loss(torch.log_softmax(x, -1), frame_lens.to(dev),
                                      tokens.to(dev), token_lens.to(dev))
        assert not infeasible.any()
        return losses.sum()

    def reference(x, dev):
        return F.ctc_loss(torch.log_softmax(x, -1).transpose(0, 1), tokens, frame_lens,
                          token_lens, reduction="sum")

    cpu64 = _run(reference, [logits], "cpu", torch.float64)
    cpu32 = _run(ours, [logits], "cpu", torch.float32)
    got = _run(ours, [logits], device, torch.float32)
    record(**{name: assert_as_accurate(g, c32, c64, name)
              for name, g, c32, c64 in zip(("loss", "grad"), got, cpu32, cpu64)})
