"""Compiled Triton TDT kernels == the torch reference, values and gradients.

On CUDA: alpha and beta node scores of the compiled kernels against the torch recursion on the
same device, float64 to rounding and float32 at most a few times farther from the float64
reference than torch's own float32 result, a second run bit-identical; ragged batches with
infeasible utterances, durations with and without 0, the issue's size (T=375, U=55) and a lattice
wider than one block (several chunks per diagonal). Then the TDT loss (with sigma and omega) and its
gradient through autograd, backend ``triton`` vs ``torch``. Dry run: the same code in the Triton
interpreter (``TRITON_INTERPRET=1``) at tiny sizes, without the second run (the interpreter
runs a program's lanes in lockstep: no race to show).
"""

from __future__ import annotations

import os

import pytest
import torch

from asr.losses.tdt import tdt_loss
from asr.losses.tdt_recursion import NEG, alpha_torch, beta_torch, mask_arcs

pytestmark = pytest.mark.gpu

#: name -> (B, T, U, durations, max block or None) at full size, and the tiny size of the dry run.
CASES = {
    "issue_T375_U55": ((8, 375, 55, (0, 1, 2, 3, 4), None), (2, 9, 4, (0, 1, 2, 3, 4), None)),
    "no_zero_duration": ((8, 200, 40, (1, 2, 4), None), (3, 8, 3, (1, 2, 4), None)),
    "chunked_rows": ((4, 120, 150, (0, 1, 2), 64), (2, 3, 16, (0, 1, 2), 16)),  # U + 1 > BLOCK
}


@pytest.fixture
def triton_ready(device):
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 set before triton is imported")
    from asr.losses import tdt_triton

    yield tdt_triton
    tdt_triton._MAX_BLOCK = 1024


def _lengths(batch: int, frames: int, tokens: int, gen: torch.Generator):
    """Ragged lengths: utterance 0 full, the last one without frames (infeasible), one with more
    tokens than frames where there are enough tokens (infeasible without duration 0)."""
    frame_lens = torch.randint(max(1, frames // 2), frames + 1, (batch,), generator=gen)
    token_lens = torch.randint(0, tokens + 1, (batch,), generator=gen)
    frame_lens[0], token_lens[0] = frames, tokens
    frame_lens[-1] = 0
    if batch > 2 and tokens >= 3:
        frame_lens[1], token_lens[1] = 2, 3
    return frame_lens, token_lens


def _weights(case: tuple, dtype: torch.dtype, device: torch.device, seed: int):
    batch, frames, tokens, durations, _ = case
    gen = torch.Generator().manual_seed(seed)
    num = len(durations)
    token_w = torch.randn(batch, frames, tokens, num, generator=gen, dtype=torch.float64) - 2
    blank_w = torch.randn(batch, frames, tokens + 1, num, generator=gen, dtype=torch.float64) - 2
    frame_lens, token_lens = _lengths(batch, frames, tokens, gen)
    token_w, blank_w = mask_arcs(token_w, blank_w, frame_lens, token_lens, durations)
    to = dict(device=device, dtype=dtype)
    return token_w.to(**to), blank_w.to(**to), frame_lens.to(device), token_lens.to(device)


def _max_diff(value, reference) -> float:
    """Max abs difference where the reference is reachable (NEG patterns are checked apart)."""
    reachable = reference > NEG / 2
    if not bool(reachable.any()):
        return 0.0
    return float((value.double() - reference.double())[reachable].abs().max())


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_tdt_kernels_equal_torch_reference(device, full_size, triton_ready, record, name):
    case = CASES[name][0 if full_size else 1]
    durations = case[3]
    triton_ready._MAX_BLOCK = case[4] or 1024
    tw64, bw64, f_lens, u_lens = _weights(case, torch.float64, device, seed=len(name))
    alpha_ref = alpha_torch(tw64, bw64, durations)
    beta_ref = beta_torch(tw64, bw64, durations, f_lens, u_lens)
    scale = max(1.0, float(alpha_ref[alpha_ref > NEG / 2].abs().max()))

    alpha = triton_ready.alpha_triton(tw64, bw64, durations)
    beta = triton_ready.beta_triton(tw64, bw64, durations, f_lens, u_lens)
    if device.type == "cuda":
        # No atomics: a second run is bit-identical unless threads race on the diagonals (the
        # interpreter runs a program's lanes in lockstep, where no race can show: GPU only).
        assert torch.equal(triton_ready.alpha_triton(tw64, bw64, durations), alpha)
        assert torch.equal(triton_ready.beta_triton(tw64, bw64, durations, f_lens, u_lens), beta)
    assert torch.equal(alpha > NEG / 2, alpha_ref > NEG / 2)
    assert torch.equal(beta > NEG / 2, beta_ref > NEG / 2)
    diffs64 = {"alpha": _max_diff(alpha, alpha_ref), "beta": _max_diff(beta, beta_ref)}
    record(dtype="float64", scale=scale, **diffs64)
    for what, diff in diffs64.items():
        assert diff <= 1e-12 * scale + 1e-12, f"float64 {what}: {diff} (|alpha| up to {scale})"

    tw32, bw32 = tw64.float(), bw64.float()
    alpha32 = triton_ready.alpha_triton(tw32, bw32, durations)
    beta32 = triton_ready.beta_triton(tw32, bw32, durations, f_lens, u_lens)
    assert alpha32.dtype == beta32.dtype == torch.float32
    assert torch.equal(alpha32 > NEG / 2, alpha_ref > NEG / 2)
    assert torch.equal(beta32 > NEG / 2, beta_ref > NEG / 2)
    torch32 = {
        "alpha": _max_diff(alpha_torch(tw32, bw32, durations), alpha_ref),
        "beta": _max_diff(beta_torch(tw32, bw32, durations, f_lens, u_lens), beta_ref),
    }
    triton32 = {"alpha": _max_diff(alpha32, alpha_ref), "beta": _max_diff(beta32, beta_ref)}
    record(dtype="float32", scale=scale, **triton32,
           **{f"torch_{k}": v for k, v in torch32.items()})
    for what, diff in triton32.items():
        bound = 4 * torch32[what] + 1e-6 * scale
        assert diff <= bound, f"float32 {what}: {diff} vs torch float32 {torch32[what]}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tdt_loss_gradients_triton_equal_torch(device, full_size, triton_ready, record, dtype):
    """Per-utterance losses (sigma 0.05, omega 0.1: NeMo's settings) and d loss / d logits
    through autograd: backend triton vs torch; float32 against the float64 torch reference."""
    batch, frames, tokens, vocab = (8, 200, 40, 64) if full_size else (3, 8, 3, 6)
    durations = (0, 1, 2, 3, 4)
    gen = torch.Generator().manual_seed(11)
    logits64 = torch.randn(batch, frames, tokens + 1, vocab + len(durations), generator=gen,
                           dtype=torch.float64).to(device)
    symbols = torch.randint(1, vocab, (batch, tokens), generator=gen).to(device)
    frame_lens, token_lens = (x.to(device) for x in _lengths(batch, frames, tokens, gen))
    weights = torch.arange(1, batch + 1, dtype=torch.float64, device=device)

    def run(backend: str, as_dtype: torch.dtype):
        x = logits64.to(as_dtype).detach().requires_grad_(True)
        loss = tdt_loss(x, symbols, frame_lens, token_lens, durations, sigma=0.05,
                        reduction="none", omega=0.1, backend=backend)
        finite = torch.isfinite(loss)
        torch.where(finite, loss * weights.to(as_dtype), 0.0).sum().backward()
        return loss.detach(), x.grad

    reference = run("torch", torch.float64)
    finite = torch.isfinite(reference[0])
    assert not finite[-1] and finite[0]  # the frameless utterance is dropped, the full one kept
    got = run("triton", dtype)
    assert got[0].dtype == dtype
    assert torch.equal(torch.isfinite(got[0]), finite)
    assert not got[1][~finite].any()
    diffs = [float((got[0] - reference[0])[finite].double().abs().max()),
             float((got[1].double() - reference[1]).abs().max())]
    record(dtype=str(dtype).split(".")[-1], loss=diffs[0], grad=diffs[1])
    if dtype == torch.float64:
        scale = float(reference[0][finite].abs().max())
        assert diffs[0] <= 1e-12 * scale + 1e-12
        assert diffs[1] <= 1e-9 * batch  # occupations (<= 1) times weights <= B
        return
    ref32 = run("torch", torch.float32)
    torch_diffs = [float((ref32[0] - reference[0])[finite].double().abs().max()),
                   float((ref32[1].double() - reference[1]).abs().max())]
    for what, diff, torch_diff in zip(("loss", "grad"), diffs, torch_diffs):
        assert diff <= 4 * torch_diff + 1e-5 * batch, f"{what}: {diff} vs torch {torch_diff}"
