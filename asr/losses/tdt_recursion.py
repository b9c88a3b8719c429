"""Forward-backward recursion of the TDT lattice (PyTorch reference + backend dispatch).

The lattice of Xu et al. 2023 ("Efficient Sequence Transduction by Jointly Predicting Tokens and
Durations", arXiv:2304.06795) as :mod:`asr.losses.tdt` defines it: nodes ``(t, u)`` (``t`` frames
and ``u`` tokens consumed); from a node with ``t < T_b`` a token arc of duration ``d`` goes to
``(t + d, u + 1)`` (``d = 0`` allowed) and a blank arc of duration ``d >= 1`` to ``(t + d, u)``.
A complete path starts at ``(0, 0)`` and ends with a blank landing exactly on ``(T_b, U_b)``.

Given arc log-weights ``token_w (B, T, U, D)`` and ``blank_w (B, T, U + 1, D)`` (``D`` durations),
this module computes, per utterance, the log-sum over complete paths (``total``) and its
gradients, which are arc occupation probabilities::

    d total / d token_w[t, u, i]
        = exp(alpha[t, u] + token_w[t, u, i] + beta[t + d_i, u + 1] - total)
    d total / d blank_w[t, u, i]
        = exp(alpha[t, u] + blank_w[t, u, i] + beta[t + d_i, u] - total)

``alpha`` (forward, from ``(0, 0)``) and ``beta`` (backward, to the end) are node scores
``(B, T + 1, U + 1)``. Arcs that cannot be on a complete path of utterance ``b`` are masked
first (:func:`mask_arcs`: tokens need ``u < U_b`` and ``t + d < T_b``, blanks ``d >= 1``,
``u <= U_b`` and ``t + d <= T_b``), so that ``total = alpha[T_b, U_b]`` (only blanks can land
on the end node) and padding never matters. Every arc raises ``k = t + u`` by at least one, so
both recursions run over the ``T + U + 1`` anti-diagonals, each depending only on earlier ones.

Unreachable nodes and masked arcs hold the finite ``NEG = -1e30`` instead of ``-inf`` (sums of
two stay finite in float32, so no ``inf - inf`` appears); a total of that order means that no
complete path exists. Utterances without frames (``T_b = 0``) have none either (the empty path
at ``(0, 0)`` does not end with a blank). Such totals are ``NEG`` with zero occupations.

Backends: ``"torch"`` (this file: the diagonals vectorised over batch and diagonal, with the
durations folded into one gather, about ten tensor ops per diagonal and no autograd graph),
``"triton"`` (:mod:`asr.losses.tdt_triton`, one program per utterance looping over the
diagonals inside the kernel), ``"auto"`` (Triton on CUDA float32 / float64 tensors, torch
otherwise). The occupations are elementwise tensor ops shared by both.

Shapes: B batch, T frames (padded), U tokens (padded), D durations, K = T + U + 1 diagonals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "NEG",
    "Backend",
    "check_durations",
    "mask_arcs",
    "alpha_torch",
    "beta_torch",
    "arc_occupations",
    "tdt_recursion",
    "tdt_recursion_with_occupation",
]

#: Log-weight of impossible arcs / nodes (finite so that no ``inf - inf`` ever appears).
NEG = -1.0e30

Backend = Literal["auto", "torch", "triton"]


def check_durations(durations: Sequence[int]) -> tuple[int, ...]:
    """Validates TDT durations (distinct ints >= 0, one >= 1) and returns them as a tuple."""
    durations = tuple(int(d) for d in durations)
    if (
        not durations
        or any(d < 0 for d in durations)
        or len(set(durations)) != len(durations)
        or max(durations) < 1
    ):
        raise ValueError(
            f"durations must be distinct non-negative ints with one >= 1, got {list(durations)}"
        )
    return durations


def _check_weights(token_w: Tensor, blank_w: Tensor, durations: Sequence[int]) -> None:
    if blank_w.dim() != 4 or token_w.dim() != 4:
        raise ValueError(
            f"token_w and blank_w must be 4-D, got {tuple(token_w.shape)} "
            f"and {tuple(blank_w.shape)}"
        )
    batch, num_frames, rows, depth = blank_w.shape
    if tuple(token_w.shape) != (batch, num_frames, rows - 1, depth) or depth != len(durations):
        raise ValueError(
            f"token_w {tuple(token_w.shape)} / blank_w {tuple(blank_w.shape)} do not match "
            f"(B, T, U, D) / (B, T, U + 1, D) with D = {len(durations)} durations"
        )


def mask_arcs(
    token_w: Tensor, blank_w: Tensor, frame_lens: Tensor, token_lens: Tensor,
    durations: Sequence[int],
) -> tuple[Tensor, Tensor]:
    """``NEG`` on every arc that is on no complete path of its utterance (module docstring).

    Args:
        token_w: (B, T, U, D). blank_w: (B, T, U + 1, D). frame_lens, token_lens: (B,).

    Returns:
        the masked ``(token_w, blank_w)`` (new tensors).
    """
    _, num_frames, rows, _ = blank_w.shape
    device = blank_w.device
    t = torch.arange(num_frames, device=device)[None, :, None, None]
    u = torch.arange(rows, device=device)[None, None, :, None]
    d = torch.tensor(durations, device=device)[None, None, None, :]
    end_t = frame_lens.to(device, torch.int64)[:, None, None, None]
    end_u = token_lens.to(device, torch.int64)[:, None, None, None]
    token_ok = (u[:, :, :-1] < end_u) & (t + d < end_t)
    blank_ok = (d >= 1) & (u <= end_u) & (t + d <= end_t)
    return token_w.masked_fill(~token_ok, NEG), blank_w.masked_fill(~blank_ok, NEG)


class _DiagonalLayout:
    """Index arithmetic of the torch recursions.

    Node scores live in a buffer ``(B, K + 2P, R + 2)``: node ``(diagonal k, row u)`` at
    ``[P + k, u + 1]``, with ``NEG`` in the margins (``P = max(d) + 1`` diagonals on each side,
    one row on each side), so that every arc's other end has an address. The ``2D`` lanes of a
    node are its token arcs (lanes ``0..D-1``) and blank arcs (``D..2D-1``). ``sign = -1``
    (forward) addresses the arc SOURCES of each node (``(k - d - 1, u - 1)`` and ``(k - d, u)``),
    ``sign = +1`` (backward) their DESTINATIONS (``(k + d + 1, u + 1)`` and ``(k + d, u)``).
    """

    def __init__(self, num_frames: int, rows: int, durations: Sequence[int], sign: int,
                 device: torch.device) -> None:
        self.num_frames, self.rows, self.num_diagonals = num_frames, rows, num_frames + rows
        self.pad, self.lanes = max(durations) + 1, 2 * len(durations)
        dur = torch.tensor(durations, device=device)
        self.diag_shift = sign * torch.cat([dur + 1, dur])[None, :, None]  # (1, 2D, 1)
        self.row_shift = sign * torch.cat([torch.ones_like(dur), torch.zeros_like(dur)])[
            None, :, None
        ]
        self.k = torch.arange(self.num_diagonals, device=device)[:, None, None]  # (K, 1, 1)
        self.u = torch.arange(rows, device=device)[None, None, :]  # (1, 1, R)

    def node_index(self) -> list[Tensor]:
        """Per diagonal k: flat (2D * R,) addresses of the other arc ends in the node buffer."""
        diag = self.pad + self.k + self.diag_shift
        row = 1 + self.u + self.row_shift
        return list((diag * (self.rows + 2) + row).flatten(1).unbind(0))

    def new_buffer(self, like: Tensor) -> Tensor:
        batch = like.shape[0]
        return like.new_full((batch, self.num_diagonals + 2 * self.pad, self.rows + 2), NEG)

    def arc_weights(self, token_w: Tensor, blank_w: Tensor, at_other_end: bool) -> Tensor:
        """``(B, K, 2D, R)``: lane weights of the arcs leaving each node (``at_other_end``
        False), or of the arcs ARRIVING at each node from the sources the lanes address (True;
        only for ``sign = -1``); ``NEG`` off the lattice. One gather."""
        batch, num_frames, rows, depth = blank_w.shape
        source = blank_w.new_empty(batch, num_frames * rows * 2 * depth + 1)
        nodes = source[:, :-1].view(batch, num_frames, rows, 2 * depth)
        nodes[:, :, : rows - 1, :depth] = token_w
        nodes[:, :, rows - 1, :depth] = NEG  # no token after the last one
        nodes[:, :, :, depth:] = blank_w
        source[:, -1] = NEG
        diag = self.k + (self.diag_shift if at_other_end else 0)
        row = self.u + (self.row_shift if at_other_end else 0)
        frame = diag - row
        lane = torch.arange(2 * depth, device=blank_w.device)[None, :, None]
        valid = (frame >= 0) & (frame < num_frames) & (row >= 0) & (row < rows)
        flat = ((frame * rows + row) * 2 * depth + lane).masked_fill(~valid, source.shape[1] - 1)
        out = source.index_select(1, flat.reshape(-1))
        return out.view(batch, self.num_diagonals, 2 * depth, rows)

    def nodes(self, buffer: Tensor) -> Tensor:
        """Buffer -> node layout ``(B, T + 1, R)``: ``out[:, t, u] = node (t + u, u)``."""
        batch = buffer.shape[0]
        t = torch.arange(self.num_frames + 1, device=buffer.device)[:, None]
        u = torch.arange(self.rows, device=buffer.device)[None, :]
        flat = ((self.pad + t + u) * (self.rows + 2) + u + 1).reshape(-1)
        return buffer.flatten(1)[:, flat].reshape(batch, self.num_frames + 1, self.rows)


def _log_sum_lanes(values: Tensor, out: Tensor) -> Tensor:
    """``logsumexp`` over dim 1 of ``(B, 2D, R)`` (all finite; overwritten), clamped at ``NEG``,
    written into ``out`` (B, R) (a view of the node buffer: no extra copy)."""
    top = values.amax(dim=1)
    summed = values.sub_(top[:, None]).exp_().sum(dim=1).log_()
    return torch.add(summed, top, out=out).clamp_(min=NEG)


class _SingleThreaded:
    """Runs a torch recursion on one CPU thread when each op of a diagonal touches fewer than
    ``2**16`` numbers (``per_step``): there, waking a second thread costs more than it saves
    (measured: 5-10x slower with 2 threads than with 1 on a loaded 2-core machine, B=8, U=50);
    larger problems keep the caller's threads."""

    def __init__(self, like: Tensor, per_step: int) -> None:
        self.active = like.device.type == "cpu" and per_step < 2**16
        self.saved = 0

    def __enter__(self) -> None:
        if self.active:
            self.saved = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.active:
            torch.set_num_threads(self.saved)


@torch.no_grad()
def alpha_torch(token_w: Tensor, blank_w: Tensor, durations: Sequence[int]) -> Tensor:
    """Forward node scores ``alpha (B, T + 1, U + 1)`` from ``(0, 0)`` (masked weights expected).

    Per diagonal: one gather of the ``2D`` arc sources of every node, one add of the incoming
    arc weights (gathered once, before the loop), one logsumexp.
    """
    _check_weights(token_w, blank_w, durations)
    batch, num_frames, rows, _ = blank_w.shape
    with _SingleThreaded(blank_w, batch * 2 * len(durations) * rows):
        return _alpha_loop(token_w, blank_w, durations)


def _alpha_loop(token_w: Tensor, blank_w: Tensor, durations: Sequence[int]) -> Tensor:
    batch, num_frames, rows, _ = blank_w.shape
    layout = _DiagonalLayout(num_frames, rows, durations, -1, blank_w.device)
    incoming = layout.arc_weights(token_w, blank_w, at_other_end=True)  # (B, K, 2D, R)
    index = layout.node_index()
    buffer = layout.new_buffer(blank_w)
    flat = buffer.flatten(1)
    buffer[:, layout.pad, 1] = 0.0  # alpha(0, 0)
    for k in range(1, layout.num_diagonals):
        arriving = flat.index_select(1, index[k]).view(batch, layout.lanes, rows)
        _log_sum_lanes(arriving.add_(incoming[:, k]), buffer[:, layout.pad + k, 1 : rows + 1])
    return layout.nodes(buffer)


@torch.no_grad()
def beta_torch(
    token_w: Tensor, blank_w: Tensor, durations: Sequence[int], frame_lens: Tensor,
    token_lens: Tensor,
) -> Tensor:
    """Backward node scores ``beta (B, T + 1, U + 1)`` to each end ``(T_b, U_b)`` (masked
    weights expected; ``beta[T_b, U_b] = 0``)."""
    _check_weights(token_w, blank_w, durations)
    batch, _, rows, _ = blank_w.shape
    with _SingleThreaded(blank_w, batch * 2 * len(durations) * rows):
        return _beta_loop(token_w, blank_w, durations, frame_lens, token_lens)


def _beta_loop(
    token_w: Tensor, blank_w: Tensor, durations: Sequence[int], frame_lens: Tensor,
    token_lens: Tensor,
) -> Tensor:
    batch, num_frames, rows, _ = blank_w.shape
    device = blank_w.device
    layout = _DiagonalLayout(num_frames, rows, durations, 1, device)
    leaving = layout.arc_weights(token_w, blank_w, at_other_end=False)  # (B, K, 2D, R)
    index = layout.node_index()
    buffer = layout.new_buffer(blank_w)
    flat = buffer.flatten(1)
    end_u = token_lens.to(device, torch.int64)
    end_diag = frame_lens.to(device, torch.int64) + end_u
    end_row = torch.arange(rows, device=device)[None, :] == end_u[:, None]  # (B, R)
    end_diagonals = set(end_diag.tolist())  # at most B diagonals hold an end node
    for k in range(layout.num_diagonals - 1, -1, -1):
        onward = flat.index_select(1, index[k]).view(batch, layout.lanes, rows)
        current = _log_sum_lanes(
            onward.add_(leaving[:, k]), buffer[:, layout.pad + k, 1 : rows + 1]
        )
        if k in end_diagonals:
            current.masked_fill_(end_row & (end_diag[:, None] == k), 0.0)
    return layout.nodes(buffer)


def _end_scores(alpha: Tensor, frame_lens: Tensor, token_lens: Tensor) -> Tensor:
    """(B,) ``alpha[b, T_b, U_b]``, ``NEG`` for utterances without frames."""
    batch_index = torch.arange(alpha.shape[0], device=alpha.device)
    frame_lens = frame_lens.to(alpha.device, torch.int64)
    total = alpha[batch_index, frame_lens, token_lens.to(alpha.device, torch.int64)]
    return total.masked_fill(frame_lens <= 0, NEG)


@torch.no_grad()
def arc_occupations(
    token_w: Tensor, blank_w: Tensor, alpha: Tensor, beta: Tensor, total: Tensor,
    durations: Sequence[int],
) -> tuple[Tensor, Tensor]:
    """``d total / d token_w (B, T, U, D)`` and ``d total / d blank_w (B, T, U + 1, D)`` from the
    node scores (module docstring); zero for utterances without a complete path."""
    num_frames = blank_w.shape[1]
    feasible = (total > NEG / 2)[:, None, None, None]
    safe_total = torch.where(feasible[:, 0, 0, 0], total, torch.zeros_like(total))
    beyond_end = beta.new_full((beta.shape[0], max(durations), beta.shape[2]), NEG)
    beta_pad = torch.cat([beta, beyond_end], 1)
    dest = torch.stack([beta_pad[:, d : d + num_frames] for d in durations], dim=-1)  # (B,T,U+1,D)
    start = alpha[:, :num_frames, :, None] - safe_total[:, None, None, None]
    token_occ = torch.exp(start[:, :, :-1] + token_w + dest[:, :, 1:])
    blank_occ = torch.exp(start + blank_w + dest)
    return token_occ * feasible, blank_occ * feasible


def _resolve_backend(backend: str, tensor: Tensor) -> str:
    if backend == "auto":
        wide = tensor.dtype in (torch.float32, torch.float64)  # the kernels' dtypes
        return "triton" if tensor.is_cuda and wide else "torch"
    if backend in ("torch", "triton"):
        return backend
    raise ValueError(f"unknown TDT recursion backend {backend!r}; expected auto|torch|triton")


def _alpha(token_w: Tensor, blank_w: Tensor, durations: Sequence[int], backend: str) -> Tensor:
    if backend == "triton":
        from asr.losses import tdt_triton

        return tdt_triton.alpha_triton(token_w, blank_w, durations)
    return alpha_torch(token_w, blank_w, durations)


def _beta(
    token_w: Tensor, blank_w: Tensor, durations: Sequence[int], frame_lens: Tensor,
    token_lens: Tensor, backend: str,
) -> Tensor:
    if backend == "triton":
        from asr.losses import tdt_triton

        return tdt_triton.beta_triton(token_w, blank_w, durations, frame_lens, token_lens)
    return beta_torch(token_w, blank_w, durations, frame_lens, token_lens)


class _TDTTotal(torch.autograd.Function):
    """Total log-probability; occupations computed in backward, or given (``known``)."""

    @staticmethod
    def forward(ctx, token_w, blank_w, frame_lens, token_lens, durations, backend, known):  # type: ignore[override]
        ctx.durations, ctx.backend, ctx.known = durations, backend, known
        if known is not None:
            return known[0].clone()
        tok_m, blank_m = mask_arcs(token_w.detach(), blank_w.detach(), frame_lens, token_lens,
                                   durations)
        alpha = _alpha(tok_m, blank_m, durations, backend)
        total = _end_scores(alpha, frame_lens, token_lens)
        ctx.save_for_backward(tok_m, blank_m, frame_lens, token_lens, alpha, total)
        return total

    @staticmethod
    def backward(ctx, grad_total):  # type: ignore[override]
        if ctx.known is not None:
            token_occ, blank_occ = ctx.known[1:]
        else:
            tok_m, blank_m, frame_lens, token_lens, alpha, total = ctx.saved_tensors
            beta = _beta(tok_m, blank_m, ctx.durations, frame_lens, token_lens, ctx.backend)
            token_occ, blank_occ = arc_occupations(tok_m, blank_m, alpha, beta, total,
                                                   ctx.durations)
        scale = grad_total[:, None, None, None]
        return token_occ * scale, blank_occ * scale, None, None, None, None, None


def _prepare(
    token_w: Tensor, blank_w: Tensor, frame_lens: Tensor, token_lens: Tensor,
    durations: Sequence[int], backend: str,
) -> tuple[tuple[int, ...], Tensor, Tensor, str]:
    durations = check_durations(durations)
    _check_weights(token_w, blank_w, durations)
    batch, num_frames, rows, _ = blank_w.shape
    device = blank_w.device
    frame_lens = frame_lens.to(device, torch.int64)
    token_lens = token_lens.to(device, torch.int64)
    if bool((frame_lens > num_frames).any()) or bool((token_lens >= rows).any()):
        raise ValueError(
            f"frame_lens {frame_lens.tolist()} / token_lens {token_lens.tolist()} exceed the "
            f"padded sizes T={num_frames}, U={rows - 1}"
        )
    return durations, frame_lens, token_lens, _resolve_backend(backend, blank_w)


def tdt_recursion(
    token_w: Tensor,
    blank_w: Tensor,
    frame_lens: Tensor,
    token_lens: Tensor,
    durations: Sequence[int],
    backend: str = "auto",
) -> Tensor:
    """Log-sum over the complete paths of each utterance, differentiable w.r.t. the weights.

    Args:
        token_w: (B, T, U, D) token-arc log-weights. blank_w: (B, T, U + 1, D) blank-arc
            log-weights. frame_lens: (B,) T_b. token_lens: (B,) U_b.
        durations: the D durations (distinct, >= 0, one >= 1).
        backend: ``"auto" | "torch" | "triton"``.

    Returns:
        (B,) totals; ``<= NEG / 2`` where no complete path exists (zero gradient there).
    """
    durations, frame_lens, token_lens, resolved = _prepare(
        token_w, blank_w, frame_lens, token_lens, durations, backend
    )
    return _TDTTotal.apply(token_w, blank_w, frame_lens, token_lens, durations, resolved, None)


def tdt_recursion_with_occupation(
    token_w: Tensor,
    blank_w: Tensor,
    frame_lens: Tensor,
    token_lens: Tensor,
    durations: Sequence[int],
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`tdt_recursion` and its detached arc occupations from ONE forward + backward sweep.

    Returns:
        ``(total (B,) with grad_fn, token_occ (B, T, U, D), blank_occ (B, T, U + 1, D))``.
    """
    durations, frame_lens, token_lens, resolved = _prepare(
        token_w, blank_w, frame_lens, token_lens, durations, backend
    )
    with torch.no_grad():
        tok_m, blank_m = mask_arcs(token_w, blank_w, frame_lens, token_lens, durations)
        alpha = _alpha(tok_m, blank_m, durations, resolved)
        beta = _beta(tok_m, blank_m, durations, frame_lens, token_lens, resolved)
        total = _end_scores(alpha, frame_lens, token_lens)
        token_occ, blank_occ = arc_occupations(tok_m, blank_m, alpha, beta, total, durations)
    known = (total, token_occ, blank_occ)
    total = _TDTTotal.apply(token_w, blank_w, frame_lens, token_lens, durations, resolved, known)
    return total, token_occ, blank_occ
