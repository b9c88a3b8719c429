"""Compiled Triton mutual-information kernels == the torch reference, values and gradients.

On CUDA: float32 and float64, ragged batches up to B=32, T=1000, S (=U) = 200, and a lattice
wider than one block (several chunks per diagonal); a second run must be bit-identical (a race
between the threads that write and read a diagonal would not be). float64 must agree to rounding;
float32 is compared with the float64 reference and may be at most a few times less accurate than the
torch float32 reference itself (both round alpha values of magnitude ~1e3 at every diagonal).
Dry run: the same code in the Triton interpreter (``TRITON_INTERPRET=1``) at tiny sizes, without
the second run (the interpreter runs a program's lanes in lockstep: no race to show).
"""

from __future__ import annotations

import os

import pytest
import torch

from asr.losses.mutual_information import (
    backward_torch,
    forward_torch,
    mutual_information_recursion,
)

pytestmark = pytest.mark.gpu

#: name -> (B, S, T, max block or None) at full size, and the tiny size of the dry run.
CASES = {
    "small": ((4, 5, 7, None), (3, 4, 6, None)),
    "medium": ((8, 50, 150, None), (2, 6, 9, None)),
    "B32_T1000_U200": ((32, 200, 1000, None), (2, 8, 12, None)),
    "chunked_diagonals": ((4, 200, 300, 64), (2, 16, 3, 16)),  # S + 1 > BLOCK
}


@pytest.fixture
def triton_ready(device):
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 set before triton is imported")
    from asr.losses import mutual_information_triton as mit

    yield mit
    mit._MAX_BLOCK = 1024


def _lattice(case: tuple, dtype: torch.dtype, device: torch.device, seed: int):
    """Random px, py and ragged lengths; utterance 0 is full length, one has no symbols."""
    batch, num_symbols, num_frames, _ = case
    gen = torch.Generator().manual_seed(seed)
    px = torch.randn(batch, num_symbols, num_frames + 1, generator=gen, dtype=torch.float64)
    py = torch.randn(batch, num_symbols + 1, num_frames, generator=gen, dtype=torch.float64)
    symbol_lens = torch.randint(0, num_symbols + 1, (batch,), generator=gen)
    frame_lens = torch.randint(1, num_frames + 1, (batch,), generator=gen)
    symbol_lens[0], frame_lens[0] = num_symbols, num_frames
    symbol_lens[-1] = 0
    # No symbol arc after an utterance's last frame (what the losses feed the recursion).
    beyond = torch.arange(num_frames + 1)[None, None, :] >= frame_lens[:, None, None]
    px = px.masked_fill(beyond, float("-inf"))
    to = dict(device=device, dtype=dtype)
    return px.to(**to), py.to(**to), symbol_lens.to(device), frame_lens.to(device)


def _max_diff(value, reference) -> float:
    """Max abs difference where the reference is finite (-inf patterns are checked apart)."""
    finite = torch.isfinite(reference)
    if not bool(finite.any()):
        return 0.0
    return float((value.double() - reference.double())[finite].abs().max())


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_kernels_equal_torch_reference(device, full_size, triton_ready, record, name):
    case = CASES[name][0 if full_size else 1]
    triton_ready._MAX_BLOCK = case[3] or 1024
    px64, py64, s_lens, f_lens = _lattice(case, torch.float64, device, seed=len(name))
    alpha_ref = forward_torch(px64, py64)
    beta_ref = backward_torch(px64, py64, s_lens, f_lens)
    scale = max(1.0, float(alpha_ref[torch.isfinite(alpha_ref)].abs().max()))

    alpha = triton_ready.forward_triton(px64, py64)
    beta = triton_ready.backward_triton(px64, py64, s_lens, f_lens)
    if device.type == "cuda":
        # No atomics: a second run is bit-identical unless threads race on the diagonals (the
        # interpreter runs a program's lanes in lockstep, where no race can show: GPU only).
        assert torch.equal(triton_ready.forward_triton(px64, py64), alpha)
        assert torch.equal(triton_ready.backward_triton(px64, py64, s_lens, f_lens), beta)
    assert torch.equal(torch.isneginf(alpha), torch.isneginf(alpha_ref))
    assert torch.equal(torch.isneginf(beta), torch.isneginf(beta_ref))
    diffs64 = {"alpha": _max_diff(alpha, alpha_ref), "beta": _max_diff(beta, beta_ref)}
    record(dtype="float64", scale=scale, **diffs64)
    for what, diff in diffs64.items():
        assert diff <= 1e-12 * scale + 1e-12, f"float64 {what}: {diff} (|alpha| up to {scale})"

    px32, py32 = px64.float(), py64.float()
    alpha32 = triton_ready.forward_triton(px32, py32)
    beta32 = triton_ready.backward_triton(px32, py32, s_lens, f_lens)
    assert alpha32.dtype == beta32.dtype == torch.float32
    assert torch.equal(torch.isneginf(alpha32), torch.isneginf(alpha_ref))
    assert torch.equal(torch.isneginf(beta32), torch.isneginf(beta_ref))
    torch32 = {
        "alpha": _max_diff(forward_torch(px32, py32), alpha_ref),
        "beta": _max_diff(backward_torch(px32, py32, s_lens, f_lens), beta_ref),
    }
    triton32 = {"alpha": _max_diff(alpha32, alpha_ref), "beta": _max_diff(beta32, beta_ref)}
    record(dtype="float32", scale=scale, **triton32,
           **{f"torch_{k}": v for k, v in torch32.items()})
    for what, diff in triton32.items():
        bound = 4 * torch32[what] + 1e-6 * scale
        assert diff <= bound, f"float32 {what}: {diff} vs torch float32 {torch32[what]}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_recursion_gradients_triton_equal_torch(device, full_size, triton_ready, record, dtype):
    """Totals and d total / d (px, py) through autograd: backend triton vs torch, and float32
    against the float64 reference."""
    case = CASES["B32_T1000_U200"][0 if full_size else 1]
    px64, py64, s_lens, f_lens = _lattice(case, torch.float64, device, seed=7)
    weights = torch.arange(1, case[0] + 1, dtype=torch.float64, device=device)

    def run(backend: str, as_dtype: torch.dtype):
        x = px64.to(as_dtype).detach().clone().requires_grad_(True)
        y = py64.to(as_dtype).detach().clone().requires_grad_(True)
        total = mutual_information_recursion(x, y, s_lens, f_lens, backend=backend)
        (total * weights.to(as_dtype)).sum().backward()
        return total.detach(), x.grad, y.grad

    reference = run("torch", torch.float64)
    triton = run("triton", dtype)
    assert all(t.dtype == dtype for t in triton)
    assert torch.isfinite(triton[0]).all()
    diffs = [float((a.double() - r).abs().max()) for a, r in zip(triton, reference)]
    record(dtype=str(dtype).split(".")[-1], total=diffs[0], grad_px=diffs[1], grad_py=diffs[2])
    if dtype == torch.float64:
        scale = float(reference[0].abs().max())
        assert diffs[0] <= 1e-12 * scale + 1e-12
        assert max(diffs[1:]) <= 1e-9 * case[0]  # occupations (<= 1) times weights <= B
        return
    ref32 = run("torch", torch.float32)
    names = ("total", "grad_px", "grad_py")
    for what, diff, value32, value64 in zip(names, diffs, ref32, reference):
        torch_diff = float((value32.double() - value64).abs().max())
        assert diff <= 4 * torch_diff + 1e-5 * case[0], f"{what}: {diff} vs torch {torch_diff}"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_kernels_launch_on_the_tensors_gpu_not_the_current_one():
    """Tensors on ``cuda:1`` while ``cuda:0`` is current (a model moved with ``.to("cuda:1")``
    without ``set_device``): Triton launches on the current device, so without
    :func:`asr.losses.mutual_information_triton.on_device` the driver refuses the pointers."""
    from asr.losses.tdt_recursion import alpha_torch
    from asr.losses.tdt_triton import alpha_triton

    other = torch.device("cuda", 1)
    torch.cuda.set_device(0)
    case = CASES["small"][0]
    px, py, s_lens, f_lens = _lattice(case, torch.float64, other, seed=3)
    totals = {backend: mutual_information_recursion(px, py, s_lens, f_lens, backend=backend)
              for backend in ("triton", "torch")}
    assert totals["triton"].device == other
    torch.testing.assert_close(totals["triton"], totals["torch"], rtol=1e-12, atol=1e-12)
    gen = torch.Generator().manual_seed(4)
    token_w = torch.randn(2, 6, 3, 2, generator=gen, dtype=torch.float64).to(other)
    blank_w = torch.randn(2, 6, 4, 2, generator=gen, dtype=torch.float64).to(other)
    torch.testing.assert_close(alpha_triton(token_w, blank_w, (0, 1)),
                               alpha_torch(token_w, blank_w, (0, 1)), rtol=1e-12, atol=1e-12)
