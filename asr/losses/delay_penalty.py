"""Symbol-delay penalty of the transducer losses (k2's ``delay_penalty``; Kang et al. 2022,
"Delay-penalized transducer for low-latency streaming ASR", arXiv:2211.00490; k2 issue 955).

A streaming encoder trained with the plain RNN-T loss is free to emit a symbol on any frame its
alignment allows, and time masking or limited right context push it to emit late. The penalty
adds, to the log-probability of emitting a symbol at frame ``t`` of utterance ``b``::

    delay_penalty * ((T_b - 1) / 2 - t)

so a path whose symbols come earlier scores higher. ``(T_b - 1) / 2`` is the utterance's centre
frame (the mean of the frames ``0 .. T_b - 1`` a symbol can be emitted at), computed from the
utterance's own frame count, never the padded ``T``: it keeps the loss near its unpenalised value
and makes the penalty independent of the batch an utterance is in. Blank arcs are unchanged. The
loss returned is the penalised one (as k2's); ``delay_penalty = 0`` adds nothing at all (no
tensor is made), so it is exactly the plain loss.

TDT (:mod:`asr.losses.tdt`): a token arc leaves node ``(t, u)`` with a duration ``d`` (0 included)
and lands on ``(t + d, u + 1)``; it is emitted at frame ``t`` (the frame the joiner read, the
frame greedy search stamps it with), whatever its duration, so it takes the same term at that
``t``, on every duration; blank arcs are unchanged. Durations move later tokens to later
frames, where their own terms account for it.

Shapes: B batch, S symbols, U tokens, T frames (padded), D durations; ``px (B, S, T + 1)`` as in
:mod:`asr.losses.mutual_information` (column ``T_b`` and beyond hold ``-inf``: no symbol after the
last frame, whatever is added there); TDT ``token_w (B, T, U, D)`` as in
:mod:`asr.losses.tdt_recursion` (frames ``t >= T_b`` are masked by the recursion).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "check_delay_penalty",
    "add_delay_penalty",
    "add_token_delay_penalty",
    "delay_penalty_offsets",
]


def check_delay_penalty(delay_penalty: float, name: str = "delay_penalty") -> None:
    """Raises ``ValueError`` naming ``name`` unless ``delay_penalty`` is finite and >= 0 (a
    negative value would reward late symbols)."""
    value = float(delay_penalty)
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(
            f"{name} must be a finite number >= 0 (0 = off; a negative value would reward "
            f"late symbols), got {delay_penalty}"
        )


def delay_penalty_offsets(
    frame_lens: Tensor, num_cols: int, delay_penalty: float, dtype: torch.dtype
) -> Tensor:
    """``delay_penalty * ((T_b - 1) / 2 - t)`` for ``t`` in ``[0, num_cols)``.

    Args:
        frame_lens: (B,) T_b. num_cols: columns of the symbol arcs (``T + 1``).
        delay_penalty: the penalty per frame (>= 0). dtype: the result's dtype.

    Returns:
        (B, 1, num_cols) on ``frame_lens``' device, to add to ``px (B, S, num_cols)``.
    """
    check_delay_penalty(delay_penalty)
    centre = (frame_lens.to(torch.float64) - 1.0) / 2.0  # (B,)
    frames = torch.arange(num_cols, device=frame_lens.device, dtype=torch.float64)
    return (delay_penalty * (centre[:, None] - frames[None, :])).to(dtype)[:, None, :]


def add_delay_penalty(px: Tensor, frame_lens: Tensor, delay_penalty: float) -> Tensor:
    """``px`` with the symbol-delay penalty added (module docstring); ``px`` itself when the
    penalty is 0 (no new tensor).

    Args:
        px: (B, S, T + 1) symbol-arc log-probs. frame_lens: (B,) T_b.
        delay_penalty: >= 0.

    Returns:
        (B, S, T + 1), a new tensor unless ``delay_penalty == 0``.
    """
    check_delay_penalty(delay_penalty)
    if delay_penalty == 0.0:
        return px
    offsets = delay_penalty_offsets(frame_lens.to(px.device), px.shape[2], delay_penalty, px.dtype)
    return px + offsets


def add_token_delay_penalty(token_w: Tensor, frame_lens: Tensor, delay_penalty: float) -> Tensor:
    """TDT token-arc weights with the symbol-delay penalty of their emission frame added
    (module docstring); ``token_w`` itself when the penalty is 0 (no new tensor).

    Args:
        token_w: (B, T, U, D) token-arc log-weights (emit ``y[u]`` at frame ``t`` with each
            duration). frame_lens: (B,) T_b. delay_penalty: >= 0.

    Returns:
        (B, T, U, D), a new tensor unless ``delay_penalty == 0``.
    """
    check_delay_penalty(delay_penalty)
    if delay_penalty == 0.0:
        return token_w
    offsets = delay_penalty_offsets(
        frame_lens.to(token_w.device), token_w.shape[1], delay_penalty, token_w.dtype
    )  # (B, 1, T)
    return token_w + offsets.transpose(1, 2)[..., None]
