"""Triton mutual-information kernels == the torch reference, in the CPU interpreter.

``TRITON_INTERPRET=1`` must be set before triton is first imported, and the default test run
imports modules in any order, so the checks run in a fresh subprocess (this file executed as a
script with the variable set). The GPU (compiled) comparison is marked ``gpu``.
"""

import json
import os

import pytest
import torch
from interpreter_helpers import run_in_interpreter


def _cases():
    """(name, S, T, symbol_lens, frame_lens, max_block) lattices, incl. ragged lengths."""
    return [
        ("ragged", 4, 6, [4, 2, 0], [6, 3, 2], None),  # first utterance is full length
        ("chunked_diagonals", 17, 4, [17, 11], [4, 3], 16),  # S + 1 > BLOCK: two chunks
    ]


def _compare(device: str) -> dict:
    """Runs triton vs torch on every case; returns max abs differences (json-friendly)."""
    from asr.losses import mutual_information_triton as mit
    from asr.losses.mutual_information import (
        backward_torch,
        forward_torch,
        mutual_information_recursion,
    )

    results = {}
    for name, num_symbols, num_frames, symbol_lens, frame_lens, max_block in _cases():
        if max_block is not None:
            mit._MAX_BLOCK = max_block
        gen = torch.Generator().manual_seed(len(name))
        for dtype in (torch.float32, torch.float64):
            batch = len(symbol_lens)
            px = torch.randn(batch, num_symbols, num_frames + 1, generator=gen, dtype=dtype)
            py = torch.randn(batch, num_symbols + 1, num_frames, generator=gen, dtype=dtype)
            px, py = px.to(device), py.to(device)
            s_lens = torch.tensor(symbol_lens, device=device)
            f_lens = torch.tensor(frame_lens, device=device)
            alpha_diff = (mit.forward_triton(px, py) - forward_torch(px, py)).abs().max()
            beta_ref = backward_torch(px, py, s_lens, f_lens)
            beta = mit.backward_triton(px, py, s_lens, f_lens)
            same_inf = torch.equal(torch.isneginf(beta), torch.isneginf(beta_ref))
            finite = torch.isfinite(beta_ref)
            beta_diff = (beta[finite] - beta_ref[finite]).abs().max()
            key = f"{name}/{str(dtype).split('.')[-1]}"
            results[key] = {
                "alpha": float(alpha_diff),
                "beta": float(beta_diff),
                "same_inf": bool(same_inf),
            }
            if dtype == torch.float32:
                continue  # the autograd plumbing is checked once, in float64
            totals, grads = [], []
            for backend in ("triton", "torch"):
                x, y = px.clone().requires_grad_(True), py.clone().requires_grad_(True)
                total = mutual_information_recursion(x, y, s_lens, f_lens, backend=backend)
                weights = torch.arange(1, batch + 1, dtype=dtype, device=device)
                (total * weights).sum().backward()
                totals.append(total.detach())
                grads.append((x.grad, y.grad))
            results[key].update(
                total=float((totals[0] - totals[1]).abs().max()),
                grad_px=float((grads[0][0] - grads[1][0]).abs().max()),
                grad_py=float((grads[0][1] - grads[1][1]).abs().max()),
            )
        mit._MAX_BLOCK = 1024
    results["nan_arcs"] = _nan_arcs(device)
    return results


def _nan_arcs(device: str) -> dict:
    """Which totals are NaN, per dtype and backend, with a NaN arc inside utterance 0's lattice
    and NaN arcs outside utterance 1's (masked: ignored). A NaN inside must give a NaN total (as
    ``torch.logaddexp``), not a finite one that hides it from the trainer's non-finite check."""
    from asr.losses.mutual_information import mutual_information_recursion

    found = {}
    for dtype in (torch.float32, torch.float64):
        gen = torch.Generator().manual_seed(3)
        px = torch.randn(2, 3, 5, generator=gen, dtype=dtype)
        py = torch.randn(2, 4, 4, generator=gen, dtype=dtype)
        px[0, 1, 2] = float("nan")  # inside: S_0 = 3, T_0 = 4
        px[1, 2, 1] = py[1, 0, 3] = float("nan")  # outside: s >= S_1 = 2, t >= T_1 = 3
        s_lens, f_lens = torch.tensor([3, 2], device=device), torch.tensor([4, 3], device=device)
        for backend in ("triton", "torch"):
            total = mutual_information_recursion(px.to(device), py.to(device), s_lens, f_lens,
                                                 backend=backend)
            found[f"{str(dtype).split('.')[-1]}/{backend}"] = torch.isnan(total).tolist()
    return found


def _check(results: dict) -> None:
    nan_arcs = results.pop("nan_arcs")
    assert nan_arcs == {f"{d}/{b}": [True, False] for d in ("float32", "float64")
                        for b in ("triton", "torch")}, nan_arcs
    assert set(results) == {f"{c[0]}/{d}" for c in _cases() for d in ("float32", "float64")}
    for key, diffs in results.items():
        tol = 1e-4 if key.endswith("float32") else 1e-10
        assert diffs.pop("same_inf"), key
        if key.endswith("float64"):
            assert {"total", "grad_px", "grad_py"} <= set(diffs), key
        for what, value in diffs.items():
            assert value <= tol, f"{key} {what}: {value}"


@pytest.fixture(scope="module")
def interpreter_results():
    return run_in_interpreter(__file__)


def test_triton_interpreter_matches_torch_values_and_gradients(interpreter_results):
    _check(dict(interpreter_results))


def test_triton_on_cpu_without_interpreter_is_refused():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("this process runs the interpreter")
    from asr.losses import mutual_information_triton as mit

    px = torch.zeros(1, 2, 3)
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        mit.forward_triton(px, torch.zeros(1, 3, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused_with_the_dtype(dtype):
    """float16 does not compile (``tl.exp`` takes float32 / float64) and bfloat16 gave wrong
    totals in the interpreter; both are refused before any launch, naming the dtype."""
    from asr.losses import mutual_information_triton as mit

    px, py = torch.zeros(1, 2, 3, dtype=dtype), torch.zeros(1, 3, 2, dtype=dtype)
    with pytest.raises(ValueError, match=f"float32 or float64 inputs, got {dtype}"):
        mit.forward_triton(px, py)
    with pytest.raises(ValueError, match=f"float32 or float64 inputs, got {dtype}"):
        mit.backward_triton(px, py, torch.tensor([2]), torch.tensor([2]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_auto_backend_runs_torch_on_gpu():
    """``auto`` on CUDA picks Triton only for float32 / float64: half precision runs torch."""
    from asr.losses.mutual_information import mutual_information_recursion

    px = torch.randn(2, 3, 5, device="cuda").log_softmax(-1).bfloat16()
    py = torch.randn(2, 4, 4, device="cuda").log_softmax(-1).bfloat16()
    assert torch.equal(mutual_information_recursion(px, py, backend="auto"),
                       mutual_information_recursion(px, py, backend="torch"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_compiled_matches_torch_on_gpu():
    _check(_compare("cuda"))


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1")
    torch.set_num_threads(1)
    print(json.dumps(_compare("cpu")))
