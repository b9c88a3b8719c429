"""Fixtures of the GPU checks (every test in this folder is marked ``gpu``).

``tools/gpu_check.sh`` runs them with ``pytest -m gpu`` on a CUDA machine. Each test takes the
device under test from the ``device`` fixture and compares it with the CPU (or with the torch
reference), at full size on CUDA. Without CUDA they are skipped, unless ``ASR_GPU_TESTS_ON_CPU=1``
(what ``tools/gpu_check.sh --dry-run`` sets): then the same code runs with the CPU as the device
under test at tiny sizes, which checks everything but the GPU itself (the comparisons are then
CPU against CPU). Triton kernels need ``TRITON_INTERPRET=1`` in that mode (the dry run sets it
before triton is imported).

Measured differences go to the JSON-lines file named by ``ASR_GPU_CHECK_RECORD`` (through the
``record`` fixture), from which the check's summary makes a table.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

CPU_STAND_IN = "ASR_GPU_TESTS_ON_CPU"
REQUIRE_CUDA = "ASR_GPU_TESTS_REQUIRE_CUDA"
RECORD_FILE = "ASR_GPU_CHECK_RECORD"
FULL_SIZE = "ASR_GPU_TESTS_FULL_SIZE"


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device under test: CUDA, or the CPU in the dry run; else the test is skipped (or
    fails, where ``ASR_GPU_TESTS_REQUIRE_CUDA=1`` says that this is the GPU run)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get(REQUIRE_CUDA) == "1":
        pytest.fail("torch sees no CUDA device, on what should be the GPU machine "
                    f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    if os.environ.get(CPU_STAND_IN) == "1":
        return torch.device("cpu")
    pytest.skip(f"needs CUDA (or {CPU_STAND_IN}=1 to run the same code on the CPU at tiny sizes)")


@pytest.fixture(scope="session")
def full_size(device: torch.device) -> bool:
    """Whether to run the sizes of the GPU check (on CUDA, or where ``ASR_GPU_TESTS_FULL_SIZE=1``
    asks for them on the CPU, to try the sizes out) or the tiny ones (dry run)."""
    return device.type == "cuda" or os.environ.get(FULL_SIZE) == "1"


def _set_fp32_precision(matmul: str, conv: str) -> tuple[str, str]:
    """Sets the float32 precision of CUDA matmuls and cuDNN convolutions; returns the old ones.

    torch >= 2.9 has ``fp32_precision`` (``ieee`` or ``tf32``); older ones the ``allow_tf32``
    flags (mixing the two APIs is an error, so only one is used).
    """
    cuda_matmul = torch.backends.cuda.matmul
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(cuda_matmul, "fp32_precision") and hasattr(cudnn_conv, "fp32_precision"):
        try:
            old = (cuda_matmul.fp32_precision, cudnn_conv.fp32_precision)
            cuda_matmul.fp32_precision, cudnn_conv.fp32_precision = matmul, conv
            return old
        except RuntimeError:  # the legacy flags were used in this process: keep to them
            pass
    old = (
        "tf32" if cuda_matmul.allow_tf32 else "ieee",
        "tf32" if torch.backends.cudnn.allow_tf32 else "ieee",
    )
    cuda_matmul.allow_tf32 = matmul == "tf32"
    torch.backends.cudnn.allow_tf32 = conv == "tf32"
    return old


@pytest.fixture
def ieee_float32(device: torch.device):
    """float32 matmuls and convolutions in full precision (cuDNN uses TF32 by default), for the
    checks that compare two float32 computations closely."""
    if device.type != "cuda":
        yield
        return
    old = _set_fp32_precision("ieee", "ieee")
    try:
        yield
    finally:
        _set_fp32_precision(*old)


@pytest.fixture
def record(request):
    """``record(key=value, ...)`` appends one JSON line naming this test to the record file."""

    def write(**values) -> None:
        path = os.environ.get(RECORD_FILE)
        if not path:
            return
        row = {"test": request.node.nodeid, **values}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=float) + "\n")

    return write
