"""Triton kernels for the forward and backward recursions of the TDT lattice.

Conventions (lattice, arc weights, masking, ``NEG``) are those of
:mod:`asr.losses.tdt_recursion`, whose PyTorch code is the reference these kernels are tested
against; the weights given here are already masked (:func:`asr.losses.tdt_recursion.mask_arcs`).

Design, as the mutual-information kernels (:mod:`asr.losses.mutual_information_triton`): ONE
program per utterance loops over the ``T + U + 1`` anti-diagonals ``k = t + u`` inside the
kernel (one launch per direction instead of the torch backend's ten small ops per diagonal,
which leave a GPU idle between launches). Every arc raises ``k`` by at least one (a token of
duration 0 by exactly one), so a diagonal depends only on earlier ones: each is processed in
chunks of ``BLOCK`` rows as a vector, reading the ``2D`` arc ends of each node from the global
``alpha`` / ``beta`` buffer written by earlier iterations after a ``tl.debug_barrier()`` (a
block-wide barrier on GPU, a no-op in the interpreter), and summing them with a running
log-add. Weights are read in node layout ``(B, T, U(+1), D)``: along a diagonal consecutive
rows are ``(U - 1) * D`` elements apart, which a GPU serves from L2 since each row is read ``D``
times per diagonal (measured cost on a GPU: see ``docs/gpu.md`` once the GPU check ran).

The forward kernel writes ``alpha (B, T + 1, U + 1)``, the backward kernel ``beta`` from each
utterance's end ``(T_b, U_b)`` (``beta = 0`` there). The occupations are elementwise tensor ops
shared with the torch backend (:func:`asr.losses.tdt_recursion.arc_occupations`).

Running: compiled on CUDA tensors; on CPU tensors only with ``TRITON_INTERPRET=1`` set in the
environment BEFORE ``triton`` is first imported (the tests run the interpreter in a subprocess).
No ``@triton.autotune``: it needs a GPU and would break the interpreter path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from asr.losses.mutual_information_triton import check_device, check_dtype, log_add, on_device

__all__ = ["alpha_triton", "beta_triton"]

_MAX_BLOCK = 1024
_NEG = tl.constexpr(-1.0e30)  # asr.losses.tdt_recursion.NEG (jit code reads constexpr globals only)


@triton.jit
def _tdt_alpha_kernel(
    token_w_ptr,
    blank_w_ptr,
    durations_ptr,
    alpha_ptr,
    num_frames,
    num_tokens,
    num_durations,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    rows = num_tokens + 1
    token_b = token_w_ptr + b * num_frames * num_tokens * num_durations
    blank_b = blank_w_ptr + b * num_frames * rows * num_durations
    alpha_b = alpha_ptr + b * (num_frames + 1) * rows
    for k in range(0, num_frames + rows):
        for u0 in range(0, rows, BLOCK):
            u = u0 + tl.arange(0, BLOCK)
            t = k - u
            valid = (u < rows) & (t >= 0) & (t <= num_frames)
            acc = tl.zeros([BLOCK], dtype=alpha_ptr.dtype.element_ty) + _NEG
            for i in range(0, num_durations):
                d = tl.load(durations_ptr + i)
                src = t - d  # the source frame of both arcs into (t, u)
                m_tok = valid & (u >= 1) & (src >= 0) & (src < num_frames)
                a_tok = tl.load(alpha_b + src * rows + u - 1, mask=m_tok, other=_NEG)
                w_tok = tl.load(
                    token_b + (src * num_tokens + u - 1) * num_durations + i, mask=m_tok, other=_NEG
                )
                acc = log_add(acc, a_tok + w_tok)
                m_blk = valid & (d >= 1) & (src >= 0)
                a_blk = tl.load(alpha_b + src * rows + u, mask=m_blk, other=_NEG)
                w_blk = tl.load(
                    blank_b + (src * rows + u) * num_durations + i, mask=m_blk, other=_NEG
                )
                acc = log_add(acc, a_blk + w_blk)
            acc = tl.maximum(acc, _NEG, propagate_nan=tl.PropagateNan.ALL)  # as clamp_
            acc = tl.where((u == 0) & (t == 0), 0.0, acc)
            tl.store(alpha_b + t * rows + u, acc, mask=valid)
        tl.debug_barrier()


@triton.jit
def _tdt_beta_kernel(
    token_w_ptr,
    blank_w_ptr,
    durations_ptr,
    frame_lens_ptr,
    token_lens_ptr,
    beta_ptr,
    num_frames,
    num_tokens,
    num_durations,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    end_t = tl.load(frame_lens_ptr + b)
    end_u = tl.load(token_lens_ptr + b)
    rows = num_tokens + 1
    token_b = token_w_ptr + b * num_frames * num_tokens * num_durations
    blank_b = blank_w_ptr + b * num_frames * rows * num_durations
    beta_b = beta_ptr + b * (num_frames + 1) * rows
    last = num_frames + rows - 1
    for step in range(0, last + 1):
        k = last - step
        for u0 in range(0, rows, BLOCK):
            u = u0 + tl.arange(0, BLOCK)
            t = k - u
            valid = (u < rows) & (t >= 0) & (t <= num_frames)
            leaves = valid & (t < num_frames)
            acc = tl.zeros([BLOCK], dtype=beta_ptr.dtype.element_ty) + _NEG
            for i in range(0, num_durations):
                d = tl.load(durations_ptr + i)
                dst = t + d  # the destination frame of both arcs out of (t, u)
                m_tok = leaves & (u < num_tokens) & (dst <= num_frames)
                b_tok = tl.load(beta_b + dst * rows + u + 1, mask=m_tok, other=_NEG)
                w_tok = tl.load(
                    token_b + (t * num_tokens + u) * num_durations + i, mask=m_tok, other=_NEG
                )
                acc = log_add(acc, b_tok + w_tok)
                m_blk = leaves & (d >= 1) & (dst <= num_frames)
                b_blk = tl.load(beta_b + dst * rows + u, mask=m_blk, other=_NEG)
                w_blk = tl.load(
                    blank_b + (t * rows + u) * num_durations + i, mask=m_blk, other=_NEG
                )
                acc = log_add(acc, b_blk + w_blk)
            acc = tl.maximum(acc, _NEG, propagate_nan=tl.PropagateNan.ALL)  # as clamp_
            acc = tl.where((t == end_t) & (u == end_u), 0.0, acc)
            tl.store(beta_b + t * rows + u, acc, mask=valid)
        tl.debug_barrier()


def _block(rows: int) -> int:
    return max(16, min(_MAX_BLOCK, triton.next_power_of_2(rows)))


def _inputs(token_w: Tensor, blank_w: Tensor, durations: Sequence[int]):
    for weights in (token_w, blank_w):
        check_dtype(weights, "TDT")
    check_device(blank_w, "TDT")
    batch, num_frames, rows, num_durations = blank_w.shape
    durations_t = torch.tensor(list(durations), dtype=torch.int64, device=blank_w.device)
    return token_w.contiguous(), blank_w.contiguous(), durations_t, batch, num_frames, rows


def alpha_triton(token_w: Tensor, blank_w: Tensor, durations: Sequence[int]) -> Tensor:
    """Forward node scores ``alpha (B, T + 1, U + 1)``; token_w (B, T, U, D), blank_w
    (B, T, U + 1, D), masked."""
    token_w, blank_w, durations_t, batch, num_frames, rows = _inputs(token_w, blank_w, durations)
    alpha = torch.empty(batch, num_frames + 1, rows, dtype=blank_w.dtype, device=blank_w.device)
    with on_device(blank_w):
        _tdt_alpha_kernel[(batch,)](
            token_w, blank_w, durations_t, alpha, num_frames, rows - 1, len(durations),
            BLOCK=_block(rows), num_warps=4,
        )  # fmt: skip
    return alpha


def beta_triton(
    token_w: Tensor, blank_w: Tensor, durations: Sequence[int], frame_lens: Tensor,
    token_lens: Tensor,
) -> Tensor:
    """Backward node scores ``beta (B, T + 1, U + 1)`` to each end ``(T_b, U_b)``."""
    token_w, blank_w, durations_t, batch, num_frames, rows = _inputs(token_w, blank_w, durations)
    beta = torch.empty(batch, num_frames + 1, rows, dtype=blank_w.dtype, device=blank_w.device)
    with on_device(blank_w):
        _tdt_beta_kernel[(batch,)](
            token_w, blank_w, durations_t,
            frame_lens.to(blank_w.device, torch.int64).contiguous(),
            token_lens.to(blank_w.device, torch.int64).contiguous(),
            beta, num_frames, rows - 1, len(durations),
            BLOCK=_block(rows), num_warps=4,
        )  # fmt: skip
    return beta
