"""Mutual-information recursion over the RNN-T lattice (PyTorch reference + backend dispatch).

The recursion is the core of the pruned RNN-T loss (Kuang et al. 2022, "Pruned RNN-T for fast,
memory-efficient ASR training", arXiv:2206.13236). Given per-arc log-probabilities on a lattice
of ``(S + 1) x (T + 1)`` nodes ``(s, t)`` (``s`` symbols emitted, ``t`` frames consumed)::

    p[b, 0, 0] = 0
    p[b, s, t] = logaddexp(p[b, s - 1, t] + px[b, s - 1, t],     # emit symbol s-1 at frame t
                           p[b, s, t - 1] + py[b, s, t - 1])     # blank: leave frame t-1

and the total log-probability of utterance ``b`` is ``p[b, S_b, T_b]``. This is the *standard*
(torchaudio) topology: a symbol arc stays on its frame, so ``px`` has ``T + 1`` columns and the
caller sets ``px[b, :, t] = -inf`` for ``t >= T_b`` (no symbol after the last frame). The
"modified" topology (a symbol also consumes a frame) is not implemented.

Shapes: B batch, S symbols (padded max), T frames (padded max).
    px: (B, S, T + 1), py: (B, S + 1, T), result (B,).
    ``symbol_lens`` (S_b) and ``frame_lens`` (T_b) give each utterance's end node; nodes and arcs
    beyond it are ignored (their gradient is exactly 0), so padding values never matter: the arcs
    outside an utterance's lattice (``px[b, s, t]`` with ``s >= S_b`` or ``t > T_b``, ``py[b, s,
    t]`` with ``s > S_b`` or ``t >= T_b``) are set to ``-inf`` before the recursions
    (:func:`mask_outside`), so that NaN or ``+inf`` there cannot reach the backward scores of the
    nodes inside through ``nan + -inf`` or ``inf - inf``.

Gradients are occupation probabilities: with ``beta`` the backward log-probability from a node to
the end node, ``d total / d px[s, t] = exp(p[s, t] + px[s, t] + beta[s + 1, t] - total)`` and
likewise for ``py`` with ``beta[s, t + 1]``. Both recursions run over anti-diagonals
``k = s + t`` (each node depends only on diagonal ``k - 1``), vectorised over the batch and the
diagonal, so the Python loop has ``S + T`` steps, not ``S * T``.

Backends: ``"torch"`` (this file), ``"triton"`` (:mod:`asr.losses.mutual_information_triton`, one
program per utterance looping over diagonals), ``"auto"`` (Triton on CUDA float32 / float64
tensors, torch otherwise: the kernels take no half precision), and ``"k2"``:
``k2.mutual_information_recursion`` with a ``[0, 0, S_b, T_b]`` boundary, used only when asked
for and only if ``import k2`` works (PyPI's only k2 wheel is k2 1.23.4 for CPython 3.9 and torch
1.13.1, so it is never a dependency and ``"auto"`` never picks it).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Backend",
    "check_backend",
    "mutual_information_recursion",
    "mutual_information_occupation",
    "forward_torch",
    "backward_torch",
    "occupation_from_alpha_beta",
    "mutual_information_with_grad",
    "mask_outside",
]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "triton", "k2"]


def _check_shapes(px: Tensor, py: Tensor) -> tuple[int, int, int]:
    if px.dim() != 3 or py.dim() != 3:
        raise ValueError(f"px and py must be 3-D, got {tuple(px.shape)} and {tuple(py.shape)}")
    batch, num_symbols, t_plus_1 = px.shape
    expected_py = (batch, num_symbols + 1, t_plus_1 - 1)
    if tuple(py.shape) != expected_py:
        raise ValueError(
            f"py has shape {tuple(py.shape)}, expected {expected_py} for px of shape "
            f"{tuple(px.shape)} (standard topology: px (B,S,T+1), py (B,S+1,T))"
        )
    if px.dtype != py.dtype:
        raise ValueError(f"px dtype {px.dtype} differs from py dtype {py.dtype}")
    return batch, num_symbols, t_plus_1 - 1


def _default_lens(
    px: Tensor, symbol_lens: Tensor | None, frame_lens: Tensor | None
) -> tuple[Tensor, Tensor]:
    batch, num_symbols, t_plus_1 = px.shape
    if symbol_lens is None:
        symbol_lens = torch.full((batch,), num_symbols, dtype=torch.int64, device=px.device)
    if frame_lens is None:
        frame_lens = torch.full((batch,), t_plus_1 - 1, dtype=torch.int64, device=px.device)
    symbol_lens = symbol_lens.to(device=px.device, dtype=torch.int64)
    frame_lens = frame_lens.to(device=px.device, dtype=torch.int64)
    if bool((symbol_lens > num_symbols).any()) or bool((frame_lens > t_plus_1 - 1).any()):
        raise ValueError(
            f"symbol_lens {symbol_lens.tolist()} / frame_lens {frame_lens.tolist()} exceed the "
            f"padded sizes S={num_symbols}, T={t_plus_1 - 1}"
        )
    return symbol_lens, frame_lens


def mask_outside(
    px: Tensor, py: Tensor, symbol_lens: Tensor, frame_lens: Tensor
) -> tuple[Tensor, Tensor]:
    """``-inf`` on the arcs outside each utterance's lattice (module docstring), new tensors.

    Args:
        px: (B, S, T + 1); py: (B, S + 1, T); symbol_lens, frame_lens: (B,) int64 on px's device.

    Returns:
        ``(px, py)`` with every arc beyond ``(S_b, T_b)`` at ``-inf`` (no gradient flows there).
    """
    s_px = torch.arange(px.shape[1], device=px.device)[None, :, None]
    t_px = torch.arange(px.shape[2], device=px.device)[None, None, :]
    s_py = torch.arange(py.shape[1], device=py.device)[None, :, None]
    t_py = torch.arange(py.shape[2], device=py.device)[None, None, :]
    ends_s, ends_t = symbol_lens[:, None, None], frame_lens[:, None, None]
    px_in = (s_px < ends_s) & (t_px <= ends_t)
    py_in = (s_py <= ends_s) & (t_py < ends_t)
    neg_inf = float("-inf")
    return px.masked_fill(~px_in, neg_inf), py.masked_fill(~py_in, neg_inf)


def _skew(values: Tensor, num_rows: int, num_diagonals: int) -> Tensor:
    """Maps ``values (B, R, C)`` to diagonal layout ``(B, K, R)`` with
    ``out[b, k, r] = values[b, r, k - r]``.

    Entries with ``k - r`` outside ``[0, C)`` are ``-inf``.
    """
    batch, rows, cols = values.shape
    if rows == 0 or cols == 0:  # e.g. px of an all-empty-target batch: no arc at all
        return values.new_full((batch, num_diagonals, num_rows), float("-inf"))
    k = torch.arange(num_diagonals, device=values.device)[:, None]
    r = torch.arange(num_rows, device=values.device)[None, :]
    col = k - r
    valid = (col >= 0) & (col < cols) & (r < rows)
    flat = (r.clamp(max=rows - 1) * cols + col.clamp(0, cols - 1)).reshape(-1)
    gathered = values.reshape(batch, rows * cols)[:, flat].reshape(batch, num_diagonals, num_rows)
    return gathered.masked_fill(~valid, float("-inf"))


def _unskew(diag: Tensor, num_cols: int) -> Tensor:
    """Inverse of :func:`_skew` for a full ``(B, K, R)`` diagonal tensor -> ``(B, R, num_cols)``."""
    batch, num_diagonals, rows = diag.shape
    r = torch.arange(rows, device=diag.device)[:, None]
    c = torch.arange(num_cols, device=diag.device)[None, :]
    flat = ((r + c) * rows + r).reshape(-1)
    return diag.reshape(batch, num_diagonals * rows)[:, flat].reshape(batch, rows, num_cols)


def forward_torch(px: Tensor, py: Tensor) -> Tensor:
    """Forward log-probabilities ``p (B, S + 1, T + 1)`` of every lattice node (no autograd)."""
    batch, num_symbols, num_frames = _check_shapes(px, py)
    rows, num_diagonals = num_symbols + 1, num_symbols + num_frames + 1
    px_d = _skew(px, rows, num_diagonals)  # px_d[k, s] = px[s, k - s]
    py_d = _skew(py, rows, num_diagonals)  # py_d[k, s] = py[s, k - s]
    neg_inf = torch.full((batch, 1), float("-inf"), dtype=px.dtype, device=px.device)
    diags = [torch.cat([torch.zeros_like(neg_inf), neg_inf.expand(batch, rows - 1)], dim=1)]
    for k in range(1, num_diagonals):
        prev = diags[-1]
        from_symbol = torch.cat([neg_inf, prev[:, :-1] + px_d[:, k - 1, :-1]], dim=1)
        from_blank = prev + py_d[:, k - 1]
        diags.append(torch.logaddexp(from_symbol, from_blank))
    return _unskew(torch.stack(diags, dim=1), num_frames + 1)


def backward_torch(px: Tensor, py: Tensor, symbol_lens: Tensor, frame_lens: Tensor) -> Tensor:
    """Backward log-probabilities ``beta (B, S + 1, T + 1)``: node ``(s, t)`` to node
    ``(S_b, T_b)``."""
    batch, num_symbols, num_frames = _check_shapes(px, py)
    rows, num_diagonals = num_symbols + 1, num_symbols + num_frames + 1
    px_d = _skew(px, rows, num_diagonals)
    py_d = _skew(py, rows, num_diagonals)
    s_index = torch.arange(rows, device=px.device)[None, :]
    end_diag = symbol_lens + frame_lens
    is_end = s_index == symbol_lens[:, None]  # (B, rows)
    neg_inf_col = torch.full((batch, 1), float("-inf"), dtype=px.dtype, device=px.device)
    current = torch.full((batch, rows), float("-inf"), dtype=px.dtype, device=px.device)
    diags = [current] * num_diagonals
    for k in range(num_diagonals - 1, -1, -1):
        if k < num_diagonals - 1:
            nxt = diags[k + 1]
            via_symbol = torch.cat([nxt[:, 1:], neg_inf_col], dim=1) + px_d[:, k]
            via_blank = nxt + py_d[:, k]
            current = torch.logaddexp(via_symbol, via_blank)
        start_here = is_end & (end_diag[:, None] == k)
        diags[k] = current.masked_fill(start_here, 0.0)
    return _unskew(torch.stack(diags, dim=1), num_frames + 1)


def occupation_from_alpha_beta(
    px: Tensor, py: Tensor, alpha: Tensor, beta: Tensor, total: Tensor
) -> tuple[Tensor, Tensor]:
    """Arc occupation probabilities (= d total / d px, d total / d py) from node scores.

    Args:
        px: (B, S, T + 1); py: (B, S + 1, T); alpha, beta: (B, S + 1, T + 1); total: (B,).

    Returns:
        ``(px_grad (B, S, T + 1), py_grad (B, S + 1, T))``; zero for utterances whose total is
        ``-inf`` (no valid path) and for every arc off all complete paths.
    """
    finite = torch.isfinite(total)
    safe_total = torch.where(finite, total, torch.zeros_like(total))[:, None, None]
    px_grad = torch.exp(alpha[:, :-1, :] + px + beta[:, 1:, :] - safe_total)
    py_grad = torch.exp(alpha[:, :, :-1] + py + beta[:, :, 1:] - safe_total)
    px_grad = torch.nan_to_num(px_grad, nan=0.0) * finite[:, None, None]
    py_grad = torch.nan_to_num(py_grad, nan=0.0) * finite[:, None, None]
    return px_grad, py_grad


def check_backend(backend: str) -> None:
    """Checks, before any tensor exists (e.g. when a training config is read), that
    ``backend`` is a backend name and, for ``"k2"``, that k2 imports (it is imported only here and
    where it runs, never at module import: it is optional).

    Raises:
        ValueError: an unknown name. ImportError: ``"k2"`` without an importable k2.
    """
    if backend == "k2":
        _import_k2()
    elif backend not in ("auto", "torch", "triton"):
        raise ValueError(
            f"unknown mutual-information backend {backend!r}; expected auto|torch|triton|k2"
        )


def _resolve_backend(backend: str, px: Tensor) -> str:
    check_backend(backend)
    if backend == "auto":
        return "triton" if px.is_cuda and px.dtype in (torch.float32, torch.float64) else "torch"
    return backend


def _import_k2():
    """Imports k2 lazily; raises ImportError saying what to use instead."""
    try:
        import k2
    except ImportError as err:
        raise ImportError(
            "backend='k2' needs the k2 package, which is not importable here (PyPI's only k2 "
            "wheel is for CPython 3.9 and torch 1.13.1); use backend 'auto', 'torch' or 'triton'"
        ) from err
    return k2


def _k2_boundary(symbol_lens: Tensor, frame_lens: Tensor) -> Tensor:
    """(B, 4) int64 ``[s_begin, t_begin, s_end, t_end]`` as k2 expects."""
    zeros = torch.zeros_like(symbol_lens)
    return torch.stack([zeros, zeros, symbol_lens, frame_lens], dim=1)


def _alpha_beta(
    px: Tensor, py: Tensor, symbol_lens: Tensor, frame_lens: Tensor, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    if backend == "triton":
        from asr.losses import mutual_information_triton as mit

        alpha = mit.forward_triton(px, py)
        beta = mit.backward_triton(px, py, symbol_lens, frame_lens)
    else:
        alpha = forward_torch(px, py)
        beta = backward_torch(px, py, symbol_lens, frame_lens)
    batch_index = torch.arange(px.shape[0], device=px.device)
    total = alpha[batch_index, symbol_lens, frame_lens]
    return alpha, beta, total


class _MutualInformation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, px, py, symbol_lens, frame_lens, backend):  # type: ignore[override]
        px_c, py_c = px.detach().contiguous(), py.detach().contiguous()
        if backend == "triton":
            from asr.losses import mutual_information_triton as mit

            alpha = mit.forward_triton(px_c, py_c)
        else:
            alpha = forward_torch(px_c, py_c)
        batch_index = torch.arange(px.shape[0], device=px.device)
        total = alpha[batch_index, symbol_lens, frame_lens]
        ctx.save_for_backward(px_c, py_c, symbol_lens, frame_lens, alpha, total)
        ctx.backend = backend
        return total

    @staticmethod
    def backward(ctx, grad_total):  # type: ignore[override]
        px, py, symbol_lens, frame_lens, alpha, total = ctx.saved_tensors
        if ctx.backend == "triton":
            from asr.losses import mutual_information_triton as mit

            beta = mit.backward_triton(px, py, symbol_lens, frame_lens)
        else:
            beta = backward_torch(px, py, symbol_lens, frame_lens)
        px_grad, py_grad = occupation_from_alpha_beta(px, py, alpha, beta, total)
        scale = grad_total[:, None, None]
        return px_grad * scale, py_grad * scale, None, None, None


def mutual_information_recursion(
    px: Tensor,
    py: Tensor,
    symbol_lens: Tensor | None = None,
    frame_lens: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Total log-probability of all lattice paths, differentiable w.r.t. ``px`` and ``py``.

    Args:
        px: (B, S, T + 1) symbol-arc log-probs (``px[b, s, t]``: emit symbol ``s`` at frame ``t``).
        py: (B, S + 1, T) blank-arc log-probs (``py[b, s, t]``: leave frame ``t`` after ``s``
            symbols).
        symbol_lens: (B,) S_b, default S. frame_lens: (B,) T_b, default T.
        backend: ``"auto" | "torch" | "triton" | "k2"`` (``"k2"`` only where k2 imports).

    Returns:
        (B,) ``p[b, S_b, T_b]`` (``-inf`` where no path exists; its gradient is then 0).
    """
    _check_shapes(px, py)
    symbol_lens, frame_lens = _default_lens(px, symbol_lens, frame_lens)
    resolved = _resolve_backend(backend, px)
    px, py = mask_outside(px, py, symbol_lens, frame_lens)
    if resolved == "k2":
        k2 = _import_k2()
        return k2.mutual_information_recursion(px, py, _k2_boundary(symbol_lens, frame_lens))
    return _MutualInformation.apply(px, py, symbol_lens, frame_lens, resolved)


@torch.no_grad()
def mutual_information_occupation(
    px: Tensor,
    py: Tensor,
    symbol_lens: Tensor | None = None,
    frame_lens: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Totals and arc occupations without autograd (what pruning bounds are computed from).

    Returns:
        ``(total (B,), px_grad (B, S, T + 1), py_grad (B, S + 1, T))``.
    """
    _check_shapes(px, py)
    symbol_lens, frame_lens = _default_lens(px, symbol_lens, frame_lens)
    resolved = _resolve_backend(backend, px)
    px, py = mask_outside(px, py, symbol_lens, frame_lens)
    px, py = px.contiguous(), py.contiguous()
    if resolved == "k2":
        k2 = _import_k2()
        boundary = _k2_boundary(symbol_lens, frame_lens)
        total, (px_grad, py_grad) = k2.mutual_information_recursion(
            px, py, boundary, return_grad=True
        )
        return total, px_grad, py_grad
    alpha, beta, total = _alpha_beta(px, py, symbol_lens, frame_lens, resolved)
    px_grad, py_grad = occupation_from_alpha_beta(px, py, alpha, beta, total)
    return total, px_grad, py_grad


class _KnownGradient(torch.autograd.Function):
    """``total`` with a precomputed Jacobian: backward returns
    ``grad_total * (px_grad, py_grad)``."""

    @staticmethod
    def forward(ctx, px, py, total, px_grad, py_grad):  # type: ignore[override]
        ctx.save_for_backward(px_grad, py_grad)
        return total.clone()

    @staticmethod
    def backward(ctx, grad_total):  # type: ignore[override]
        px_grad, py_grad = ctx.saved_tensors
        scale = grad_total[:, None, None]
        return px_grad * scale, py_grad * scale, None, None, None


def mutual_information_with_grad(
    px: Tensor,
    py: Tensor,
    symbol_lens: Tensor | None = None,
    frame_lens: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Differentiable totals AND their detached occupations from ONE forward + backward sweep.

    Equivalent to :func:`mutual_information_recursion` followed by
    :func:`mutual_information_occupation`, at half the cost (what the simple loss needs).

    Returns:
        ``(total (B,) with grad_fn, px_grad (B, S, T + 1), py_grad (B, S + 1, T))``.
    """
    total, px_grad, py_grad = mutual_information_occupation(
        px.detach(), py.detach(), symbol_lens, frame_lens, backend
    )
    return _KnownGradient.apply(px, py, total, px_grad, py_grad), px_grad, py_grad
