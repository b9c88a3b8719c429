"""Triton kernels for the mutual-information recursion of the pruned RNN-T loss.

Algorithm: Kuang et al. 2022, "Pruned RNN-T for fast, memory-efficient ASR training"
(arXiv:2206.13236); conventions (standard topology, shapes, lengths) are those of
:mod:`asr.losses.mutual_information`, whose PyTorch code is the reference these kernels are
tested against.

Design: ONE program per utterance loops over the ``S + T + 1`` anti-diagonals ``k = s + t``
inside the kernel (one launch per direction, not one per diagonal). Each diagonal is processed
in chunks of ``BLOCK`` symbols as a vector; its nodes depend only on the previous diagonal,
which the program reads back from the global ``alpha`` / ``beta`` buffer after a
``tl.debug_barrier()`` (a block-wide barrier on GPU, a no-op in the interpreter). The forward
kernel writes ``alpha (B, S + 1, T + 1)``; the backward kernel writes ``beta`` from each
utterance's end node ``(S_b, T_b)``. The occupation gradients are then elementwise tensor ops
shared with the torch backend.

Running: compiled on CUDA tensors; on CPU tensors only with ``TRITON_INTERPRET=1`` set in the
environment BEFORE ``triton`` is first imported (the tests run the interpreter in a subprocess).
No ``@triton.autotune``: it needs a GPU and would break the interpreter path.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "forward_triton", "backward_triton", "interpreter_enabled", "check_device", "check_dtype",
    "on_device", "log_add",
]

_MAX_BLOCK = 1024


def interpreter_enabled() -> bool:
    """Whether Triton was configured for its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def log_add(a, b):
    """``log(exp(a) + exp(b))`` elementwise, ``-inf`` when both are, NaN when either is (as
    ``torch.logaddexp``; also used by the TDT kernels). ``tl.maximum`` / ``tl.minimum`` return
    the other operand for a NaN unless told to propagate it (PTX ``max.f32``), which would turn
    a NaN arc into a finite total."""
    big = tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)
    small = tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)
    out = big + tl.log(1.0 + tl.exp(small - big))
    return tl.where(big == float("-inf"), big, out)


@triton.jit
def _mi_forward_kernel(px_ptr, py_ptr, alpha_ptr, num_symbols, num_frames, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    cols = num_frames + 1
    px_b = px_ptr + b * num_symbols * cols
    py_b = py_ptr + b * (num_symbols + 1) * num_frames
    alpha_b = alpha_ptr + b * (num_symbols + 1) * cols
    for k in range(0, num_symbols + num_frames + 1):
        for s0 in range(0, num_symbols + 1, BLOCK):
            s = s0 + tl.arange(0, BLOCK)
            t = k - s
            valid = (s <= num_symbols) & (t >= 0) & (t <= num_frames)
            m_sym = valid & (s >= 1)
            a_sym = tl.load(alpha_b + (s - 1) * cols + t, mask=m_sym, other=float("-inf"))
            x_sym = tl.load(px_b + (s - 1) * cols + t, mask=m_sym, other=float("-inf"))
            m_blk = valid & (t >= 1)
            a_blk = tl.load(alpha_b + s * cols + t - 1, mask=m_blk, other=float("-inf"))
            y_blk = tl.load(py_b + s * num_frames + t - 1, mask=m_blk, other=float("-inf"))
            out = log_add(a_sym + x_sym, a_blk + y_blk)
            out = tl.where((s == 0) & (t == 0), 0.0, out)
            tl.store(alpha_b + s * cols + t, out, mask=valid)
        tl.debug_barrier()


@triton.jit
def _mi_backward_kernel(
    px_ptr,
    py_ptr,
    beta_ptr,
    symbol_lens_ptr,
    frame_lens_ptr,
    num_symbols,
    num_frames,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    end_s = tl.load(symbol_lens_ptr + b)
    end_t = tl.load(frame_lens_ptr + b)
    cols = num_frames + 1
    px_b = px_ptr + b * num_symbols * cols
    py_b = py_ptr + b * (num_symbols + 1) * num_frames
    beta_b = beta_ptr + b * (num_symbols + 1) * cols
    last = num_symbols + num_frames
    for step in range(0, last + 1):
        k = last - step
        for s0 in range(0, num_symbols + 1, BLOCK):
            s = s0 + tl.arange(0, BLOCK)
            t = k - s
            valid = (s <= num_symbols) & (t >= 0) & (t <= num_frames)
            m_sym = valid & (s < num_symbols)
            b_sym = tl.load(beta_b + (s + 1) * cols + t, mask=m_sym, other=float("-inf"))
            x_sym = tl.load(px_b + s * cols + t, mask=m_sym, other=float("-inf"))
            m_blk = valid & (t < num_frames)
            b_blk = tl.load(beta_b + s * cols + t + 1, mask=m_blk, other=float("-inf"))
            y_blk = tl.load(py_b + s * num_frames + t, mask=m_blk, other=float("-inf"))
            out = log_add(b_sym + x_sym, b_blk + y_blk)
            out = tl.where((s == end_s) & (t == end_t), 0.0, out)
            tl.store(beta_b + s * cols + t, out, mask=valid)
        tl.debug_barrier()


def check_device(tensor: Tensor, kernel: str = "mutual-information") -> None:
    """Raises unless ``tensor`` is on CUDA or Triton runs its interpreter (module docstring)."""
    if not tensor.is_cuda and not interpreter_enabled():
        raise RuntimeError(
            f"the Triton {kernel} kernel needs CUDA tensors (got device {tensor.device}); "
            "set TRITON_INTERPRET=1 before importing triton to run it on CPU, "
            "or use backend='torch'"
        )


def check_dtype(tensor: Tensor, kernel: str = "mutual-information") -> None:
    """Raises unless ``tensor`` is float32 or float64, the dtypes the kernels are built for.

    float16 does not compile (``tl.exp`` / ``tl.log`` take float32 and float64 only) and bfloat16
    would keep node scores of magnitude ~1e3 to 8 bits; the losses compute in float32 anyway.
    """
    if tensor.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"the Triton {kernel} kernel takes float32 or float64 inputs, got {tensor.dtype}; "
            "cast them (the losses of asr.losses compute in float32) or use backend='torch'"
        )


def on_device(tensor: Tensor) -> AbstractContextManager:
    """Makes ``tensor``'s GPU the current device for a kernel launch (a no-op on CPU).

    Triton launches on the CURRENT device and its current stream, not on the arguments' device
    as torch ops do: for tensors on ``cuda:1`` while ``cuda:0`` is current (a model moved with
    ``.to("cuda:1")`` without ``torch.cuda.set_device``) the driver refuses their pointers
    ("cannot be accessed from Triton (cpu tensor?)") or the kernel would run on another stream
    than the ops that produced them.
    """
    return torch.cuda.device(tensor.device) if tensor.is_cuda else nullcontext()


def _block(num_symbols: int) -> int:
    return max(16, min(_MAX_BLOCK, triton.next_power_of_2(num_symbols + 1)))


def forward_triton(px: Tensor, py: Tensor) -> Tensor:
    """Forward node log-probabilities ``alpha (B, S + 1, T + 1)``; px (B,S,T+1), py (B,S+1,T)."""
    check_dtype(px)
    check_device(px)
    px, py = px.contiguous(), py.contiguous()
    batch, num_symbols, cols = px.shape
    alpha = torch.empty(batch, num_symbols + 1, cols, dtype=px.dtype, device=px.device)
    with on_device(px):
        _mi_forward_kernel[(batch,)](
            px, py, alpha, num_symbols, cols - 1, BLOCK=_block(num_symbols), num_warps=4
        )
    return alpha


def backward_triton(px: Tensor, py: Tensor, symbol_lens: Tensor, frame_lens: Tensor) -> Tensor:
    """Backward node log-probabilities ``beta (B, S + 1, T + 1)`` to each end ``(S_b, T_b)``."""
    check_dtype(px)
    check_device(px)
    px, py = px.contiguous(), py.contiguous()
    batch, num_symbols, cols = px.shape
    beta = torch.empty(batch, num_symbols + 1, cols, dtype=px.dtype, device=px.device)
    with on_device(px):
        _mi_backward_kernel[(batch,)](
            px,
            py,
            beta,
            symbol_lens.to(px.device, torch.int64).contiguous(),
            frame_lens.to(px.device, torch.int64).contiguous(),
            num_symbols,
            cols - 1,
            BLOCK=_block(num_symbols),
            num_warps=4,
        )
    return beta
