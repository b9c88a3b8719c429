"""Triton TDT kernels == the torch reference, in the CPU interpreter (float64 and float32).

``TRITON_INTERPRET=1`` must be set before triton is first imported, and the default test run
imports modules in any order, so the checks run in a fresh subprocess (this file executed as a
script with the variable set). The compiled (GPU) comparison is ``tests/gpu/test_gpu_tdt.py``.

Losses and gradients are compared in float64 with ``sigma = 0.05``, and once with ``omega =
0.1`` (whose RNN-T term runs the mutual-information kernel). Every case is a padded batch with
variable ``T_b`` and ``U_b`` that includes infeasible utterances (loss ``+inf``, zero gradient,
the ``asr.losses`` rule): no frames; more tokens than frames without duration 0; a ``T_b`` that
no sum of the positive durations reaches.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from interpreter_helpers import run_in_interpreter

#: name -> (durations, frame_lens, token_lens, vocab, max block or None, infeasible utterances)
CASES = {
    "with_zero": ((0, 1, 2), [6, 5, 0, 3], [4, 2, 1, 0], 5, None, [2]),
    "without_zero": ((1, 2, 4), [6, 3, 5], [3, 3, 0], 5, None, [1]),  # U_b >= T_b
    "nemo_0_to_4": ((0, 1, 2, 3, 4), [6, 1], [4, 2], 6, None, []),
    "one": ((1,), [5, 3, 3], [3, 3, 2], 4, None, [1]),  # every arc takes a frame: T_b > U_b
    "unreachable_end": ((2, 3), [7, 1, 4], [2, 0, 1], 4, None, [1]),  # T_b = 1: no blank lands
    "chunked_rows": ((0, 1), [4, 3], [17, 9], 5, 16, []),  # U + 1 = 18 rows > BLOCK = 16
}


def _inputs(name: str, dtype: torch.dtype, device: str):
    durations, frame_lens, token_lens, vocab, _, _ = CASES[name]
    gen = torch.Generator().manual_seed(len(name))
    batch, frames, num_tokens = len(frame_lens), max(frame_lens), max(token_lens)
    logits = torch.randn(batch, frames, num_tokens + 1, vocab + len(durations), generator=gen,
                         dtype=torch.float64)
    tokens = torch.randint(1, vocab, (batch, num_tokens), generator=gen)
    return (logits.to(device, dtype), tokens.to(device), torch.tensor(frame_lens, device=device),
            torch.tensor(token_lens, device=device), durations)


def compare(device: str) -> dict:
    """Runs the triton backend vs the torch one on every case; returns max abs differences."""
    from asr.losses import tdt_triton
    from asr.losses.tdt import tdt_lattice_weights, tdt_loss
    from asr.losses.tdt_recursion import NEG, alpha_torch, beta_torch, mask_arcs

    results = {}
    for name, (durations, *_, max_block, infeasible) in CASES.items():
        tdt_triton._MAX_BLOCK = max_block or 1024
        for dtype in (torch.float32, torch.float64):
            logits, tokens, frame_lens, token_lens, _ = _inputs(name, dtype, device)
            weights = tdt_lattice_weights(logits, tokens, durations, sigma=0.05)
            token_w, blank_w = mask_arcs(*weights, frame_lens, token_lens, durations)
            scores = {
                "alpha": (tdt_triton.alpha_triton(token_w, blank_w, durations),
                          alpha_torch(token_w, blank_w, durations)),
                "beta": (tdt_triton.beta_triton(token_w, blank_w, durations,
                                                frame_lens, token_lens),
                         beta_torch(token_w, blank_w, durations, frame_lens, token_lens)),
            }  # fmt: skip
            key = f"{name}/{str(dtype).split('.')[-1]}"
            results[key] = {}
            for what, (got, ref) in scores.items():
                reachable = ref > NEG / 2
                same = bool(torch.equal(got > NEG / 2, reachable))
                results[key][f"same_unreachable_{what}"] = same
                results[key][what] = float((got - ref)[reachable].abs().max())
            if dtype == torch.float32:
                continue  # losses and gradients: float64
            for omega in (0.0, 0.1) if name == "nemo_0_to_4" else (0.0,):
                losses, grads = [], []
                for backend in ("triton", "torch"):
                    x = logits.clone().requires_grad_(True)
                    loss = tdt_loss(x, tokens, frame_lens, token_lens, durations, sigma=0.05,
                                    reduction="none", omega=omega, backend=backend)
                    weights = torch.arange(1, len(loss) + 1, dtype=dtype, device=device)
                    torch.where(torch.isfinite(loss), loss * weights, 0.0).sum().backward()
                    losses.append(loss.detach())
                    grads.append(x.grad)
                inf = [torch.isinf(x).nonzero().flatten().tolist() for x in losses]
                finite = torch.isfinite(losses[1])
                results[key].update({
                    f"infinite_triton/omega={omega}": inf[0],
                    f"infinite_torch/omega={omega}": inf[1],
                    f"zero_grad_where_infinite/omega={omega}":
                        bool((grads[0][~finite.cpu()] == 0).all()),
                    f"loss/omega={omega}": float((losses[0] - losses[1])[finite].abs().max()),
                    f"grad/omega={omega}": float((grads[0] - grads[1]).abs().max()),
                })  # fmt: skip
            results[key]["expected_infinite"] = infeasible
    tdt_triton._MAX_BLOCK = 1024
    results["nan_arcs"] = nan_arcs(device)
    return results


#: What :func:`nan_arcs` must find: utterance 0's total NaN, utterance 1's not, both backends.
NAN_TOTALS = {
    f"{d}/{b}": [True, False] for d in ("float32", "float64") for b in ("triton", "torch")
}


def nan_arcs(device: str) -> dict:
    """Which totals are NaN, per dtype and backend, with a NaN arc inside utterance 0's lattice
    and NaN arcs outside utterance 1's (masked: ignored). A NaN inside must give a NaN total (as
    the torch recursion's logsumexp), not a finite one that hides it from the trainer."""
    from asr.losses.tdt_recursion import tdt_recursion

    durations, found = (0, 1, 2), {}
    for dtype in (torch.float32, torch.float64):
        gen = torch.Generator().manual_seed(5)
        token_w = torch.randn(2, 5, 3, 3, generator=gen, dtype=dtype) - 2
        blank_w = torch.randn(2, 5, 4, 3, generator=gen, dtype=dtype) - 2
        token_w[0, 1, 1, 0] = float("nan")  # inside: T_0 = 5, U_0 = 3
        token_w[1, 1, 2, 0] = blank_w[1, 4, 0, 1] = float("nan")  # outside: U_1 = 2, T_1 = 3
        lens = [torch.tensor(x, device=device) for x in ([5, 3], [3, 2])]
        for backend in ("triton", "torch"):
            total = tdt_recursion(token_w.to(device), blank_w.to(device), *lens, durations,
                                  backend=backend)
            found[f"{str(dtype).split('.')[-1]}/{backend}"] = torch.isnan(total).tolist()
    return found


def check(results: dict) -> None:
    found = results.pop("nan_arcs")
    assert found == NAN_TOTALS, found
    assert set(results) == {f"{c}/{d}" for c in CASES for d in ("float32", "float64")}
    for key, diffs in results.items():
        tol = 1e-4 if key.endswith("float32") else 1e-10
        expected = diffs.pop("expected_infinite", None)
        for what, value in diffs.items():
            if what.startswith(("same_", "zero_grad")):
                assert value is True, f"{key} {what}"
            elif what.startswith("infinite_"):
                assert value == expected, f"{key} {what}: {value} != {expected}"
            else:
                assert value <= tol, f"{key} {what}: {value}"


@pytest.fixture(scope="module")
def interpreter_results():
    return run_in_interpreter(__file__)


def test_triton_interpreter_matches_torch_values_gradients_and_infeasible(interpreter_results):
    check(dict(interpreter_results))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_kernels_propagate_nan_on_gpu():
    """The compiled kernels keep a NaN arc's NaN (PTX ``max.f32`` alone would drop it)."""
    found = nan_arcs("cuda")
    assert found == NAN_TOTALS, found


_COMPILE = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from asr.losses import tdt_triton

done = []
for dtype in ("fp32", "fp64"):
    for kernel in (tdt_triton._tdt_alpha_kernel, tdt_triton._tdt_beta_kernel):
        names = kernel.arg_names
        signature = {n: "constexpr" if n == "BLOCK" else "*i64" if n.endswith("lens_ptr")
                     or n == "durations_ptr" else f"*{dtype}" if n.endswith("_ptr") else "i32"
                     for n in names}
        source = ASTSource(fn=kernel, signature=signature,
                           constexprs={(names.index("BLOCK"),): 64})
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": 4})
        done.append([kernel.fn.__name__, dtype, "cubin" in compiled.asm])
print(json.dumps(done))
"""


def test_kernels_compile_for_a_cuda_target(tmp_path):
    """The real compiler (not the interpreter) accepts both kernels for sm_90 in float32 and
    float64, here without a GPU: it rejects what the interpreter lets through (e.g. a global
    that is not a ``tl.constexpr``)."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env.update(PYTHONPATH=root + os.pathsep + env.get("PYTHONPATH", ""),
               TRITON_CACHE_DIR=str(tmp_path), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(done) == 4 and all(ok for *_, ok in done), done


def test_bfloat16_weights_are_refused_with_the_dtype():
    """Neither kernel compiles for bfloat16 (nor float16): refused before any launch."""
    from asr.losses import tdt_triton

    token_w, blank_w = torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 2, 2, dtype=torch.bfloat16)
    for call in (lambda: tdt_triton.alpha_triton(token_w, blank_w, (0, 1)),
                 lambda: tdt_triton.beta_triton(token_w, blank_w, (0, 1), torch.tensor([2]),
                                                torch.tensor([1]))):
        with pytest.raises(ValueError, match="float32 or float64 inputs, got torch.bfloat16"):
            call()


def test_triton_on_cpu_without_interpreter_is_refused():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("this process runs the interpreter")
    from asr.losses import tdt_triton

    with pytest.raises(RuntimeError, match="CUDA tensors"):
        tdt_triton.alpha_triton(torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 2, 2), (0, 1))


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1")
    torch.set_num_threads(1)
    print(json.dumps(compare("cpu")))
