"""Every Triton kernel of ``asr.losses`` compiles to GPU machine code (cubin) for the GPUs the
LibriSpeech recipes name (A100: sm_80; H100/H200: sm_90), in float32 and float64, without a GPU.

The interpreter tests (``test_mutual_information_triton.py``, ``test_tdt_triton.py``) check what
the kernels compute but run them as Python, which accepts programs the compiler refuses (types,
pointer arithmetic, constexpr use); the compiled comparison needs a GPU (``tests/gpu``). Triton
compiles for a named target ahead of time with its own bundled ``ptxas`` and no driver, so this
catches a kernel that would fail on the first GPU call here, on the CPU.

``TRITON_INTERPRET`` must be unset when triton is first imported (``triton.jit`` then returns
interpreted functions, which do not compile), and the default test run may have imported it with
the interpreter on, so the compilation runs in a fresh subprocess: this file executed as a script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The GPUs' compute capabilities (the recipes' A100, the GPU check's H100 / H200).
ARCHITECTURES = (80, 90)

#: module -> kernel -> pointer argument -> element type ("float": the loss's dtype); the integer
#: arguments that are not pointers are i32 and every ``tl.constexpr`` is a block size.
KERNELS = {
    "asr.losses.mutual_information_triton": {
        "_mi_forward_kernel": {"px_ptr": "float", "py_ptr": "float", "alpha_ptr": "float"},
        "_mi_backward_kernel": {
            "px_ptr": "float", "py_ptr": "float", "beta_ptr": "float",
            "symbol_lens_ptr": "i64", "frame_lens_ptr": "i64",
        },
    },
    "asr.losses.tdt_triton": {
        "_tdt_alpha_kernel": {
            "token_w_ptr": "float", "blank_w_ptr": "float", "durations_ptr": "i64",
            "alpha_ptr": "float",
        },
        "_tdt_beta_kernel": {
            "token_w_ptr": "float", "blank_w_ptr": "float", "durations_ptr": "i64",
            "frame_lens_ptr": "i64", "token_lens_ptr": "i64", "beta_ptr": "float",
        },
    },
}

#: ``@triton.jit`` helpers called from the kernels (compiled with them, not on their own).
HELPERS = {"log_add"}

BLOCK = 64


def _compile_all() -> dict:
    """Compiles every kernel of :data:`KERNELS` for each architecture and dtype; returns the
    cubin sizes, the kernels found in the modules and the triton version."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    found, sizes = [], {}
    for module_name, kernels in KERNELS.items():
        module = importlib.import_module(module_name)
        found += [f"{module_name}.{name}" for name, fn in vars(module).items()
                  if isinstance(fn, triton.runtime.jit.JITFunction) and name not in HELPERS]
        for name, pointers in kernels.items():
            fn = getattr(module, name)
            for dtype in ("fp32", "fp64"):
                signature, constexprs = {}, {}
                for param in fn.params:  # triton's view of each argument, in order
                    if param.name in pointers:
                        element = pointers[param.name]
                        signature[param.name] = "*" + (dtype if element == "float" else element)
                    elif param.is_constexpr:
                        signature[param.name], constexprs[param.name] = "constexpr", BLOCK
                    else:
                        signature[param.name] = "i32"
                for arch in ARCHITECTURES:
                    compiled = triton.compile(
                        ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                        target=GPUTarget("cuda", arch, 32),
                    )
                    sizes[f"{module_name}.{name} {dtype} sm_{arch}"] = len(compiled.asm["cubin"])
    return {"sizes": sizes, "found": sorted(found), "triton": triton.__version__}


def test_every_kernel_compiles_for_the_recipes_gpus(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "cache"), PYTHONWARNINGS="ignore",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    listed = sorted(f"{module}.{name}" for module, kernels in KERNELS.items() for name in kernels)
    assert result["found"] == listed, "a kernel is missing from KERNELS (or no longer exists)"
    assert len(result["sizes"]) == len(listed) * 2 * len(ARCHITECTURES)
    assert all(size > 0 for size in result["sizes"].values()), result["sizes"]


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.exit("run without TRITON_INTERPRET: interpreted kernels do not compile")
    print(json.dumps(_compile_all()))
