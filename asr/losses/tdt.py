"""Token-and-Duration Transducer (TDT) loss (Xu et al. 2023, "Efficient Sequence Transduction by
Jointly Predicting Tokens and Durations", arXiv:2304.06795).

The joiner emits ``V`` token logits plus ``D = len(durations)`` duration logits per lattice node
``(t, u)``. Token and duration distributions are independent log-softmaxes. From node ``(t, u)``
(``t`` frames and ``u`` tokens consumed; arcs leave only nodes with ``t < T_b``):

* emit token ``y[u]`` with duration ``d``: to ``(t + d, u + 1)``, weight
  ``log P_tok(y[u] | t, u) + log P_dur(d | t, u)``; ``d = 0`` is allowed for tokens;
* emit blank with duration ``d >= 1``: to ``(t + d, u)``, weight
  ``log P_tok(blank | t, u) + log P_dur(d | t, u)``. Blank never takes duration 0 (its mass on
  ``d = 0`` is lost, not renormalised, as in the paper and NeMo).

A path must END WITH A BLANK landing exactly on ``(T_b, U_b)``; landing past ``T_b`` or ending
on a token is not a complete alignment. ``sigma`` is the paper's logit under-normalisation
(subtracted from the token log-probs; 0 = off, the default). The paper's ``omega`` (sampling the
plain RNN-T loss) is not implemented.

Infeasible utterances (no complete alignment: ``T_b = 0``; more tokens than the durations can
place, e.g. ``U_b >= T_b`` without duration 0; a ``T_b`` that no sum of the positive durations
reaches) get a per-utterance loss of ``+inf`` with a zero gradient, as in the RNN-T losses
(:mod:`asr.losses.rnnt`, :mod:`asr.losses.pruned_rnnt`); the heads drop them and count them in
``metrics["num_infinite"]``. An empty target is feasible whenever blanks can cover ``T_b``.

Implementation: a PyTorch DP over anti-diagonals ``k = t + u`` (every arc increases ``k`` by at
least 1, so each diagonal depends only on earlier ones), vectorised over batch and diagonal, with
autograd through it; ``S + T`` Python steps. Unreachable nodes hold a large finite negative value
(``-1e30``) instead of ``-inf`` so that ``logsumexp`` gradients stay finite; a total of that
order means no complete alignment and becomes ``+inf`` at the end. No Triton kernel: the DP is O(B T U D) small
tensor ops next to the O(B T U V) joiner, which dominates (see ``tools/bench/rnnt_loss.py``).

Shapes: B batch, T frames, U tokens, V vocab incl. blank (blank_id 0), D durations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from asr.losses.pruned_rnnt import (
    frameless_batch_loss,
    gather_log_softmax,
    reduce_per_utterance,
)

__all__ = ["tdt_loss", "tdt_lattice_weights"]

#: Log-weight of impossible arcs / nodes (finite so that autograd never sees inf - inf).
NEG = -1.0e30


def tdt_lattice_weights(
    logits: Tensor,
    tokens: Tensor,
    durations: Sequence[int],
    blank_id: int = 0,
    sigma: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Arc log-weights of the TDT lattice.

    Args:
        logits: (B, T, U + 1, V + D). tokens: (B, U). durations: D distinct ints >= 0.

    Returns:
        ``token_w (B, T, U, D)`` (emit ``y[u]`` from ``(t, u)`` with duration ``durations[i]``)
        and ``blank_w (B, T, U + 1, D)`` (``NEG`` where the duration is 0).
    """
    num_durations = len(durations)
    if num_durations == 0 or logits.shape[-1] <= num_durations:
        raise ValueError(
            f"logits last dim {logits.shape[-1]} must be V + len(durations) with "
            f"durations={list(durations)}"
        )
    if any(d < 0 for d in durations) or len(set(durations)) != num_durations or max(durations) < 1:
        raise ValueError(
            f"durations must be distinct non-negative ints with one >= 1, got {list(durations)}"
        )
    vocab_size = logits.shape[-1] - num_durations
    batch, num_frames, rows, _ = logits.shape
    # Only two token log-probs per node are needed: gather them against the normaliser instead
    # of materialising a full (B, T, U+1, V) log-softmax (and its gradient pieces).
    dur_lp = torch.log_softmax(logits[..., vocab_size:], dim=-1)  # (B, T, U+1, D)
    padded = torch.cat([tokens.to(torch.int64), tokens.new_zeros(batch, 1).long()], dim=1)
    symbols = padded[:, None, :].expand(batch, num_frames, rows)
    index = torch.stack([symbols, torch.full_like(symbols, blank_id)], dim=-1)
    sym_lp, blank_lp = (gather_log_softmax(logits, index, vocab_size) - sigma).unbind(-1)
    token_w = sym_lp[:, :, :-1, None] + dur_lp[:, :, :-1]  # (B, T, U, D)
    zero_duration = torch.tensor([d == 0 for d in durations], device=logits.device)
    blank_w = (blank_lp[..., None] + dur_lp).masked_fill(zero_duration, NEG)
    return token_w, blank_w


def _skew(values: Tensor, num_rows: int, num_diagonals: int) -> Tensor:
    """``values (B, T, R, D)`` -> ``(B, K, num_rows, D)`` with ``out[:, k, u] = values[:, k - u, u]``
    (``NEG`` where ``k - u`` is not a frame or ``u >= R``)."""
    batch, num_frames, rows, depth = values.shape
    if num_frames == 0 or rows == 0:  # token arcs of an all-empty-target batch: none
        return values.new_full((batch, num_diagonals, num_rows, depth), NEG)
    k = torch.arange(num_diagonals, device=values.device)[:, None]
    u = torch.arange(num_rows, device=values.device)[None, :]
    t = k - u
    valid = (t >= 0) & (t < num_frames) & (u < rows)
    flat = (t.clamp(0, num_frames - 1) * rows + u.clamp(max=rows - 1)).reshape(-1)
    out = values.reshape(batch, num_frames * rows, depth)[:, flat]
    out = out.reshape(batch, num_diagonals, num_rows, depth)
    return out.masked_fill(~valid[None, :, :, None], NEG)


def _tdt_alphas(token_w: Tensor, blank_w: Tensor, durations: Sequence[int]) -> Tensor:
    """Forward scores in diagonal layout ``(B, K, U + 1)``, ``K = T + U + 1``, node ``(k - u, u)``."""
    batch, num_frames, rows, _ = blank_w.shape
    num_diagonals = num_frames + rows  # t in [0, T], u in [0, U]
    num_durations = len(durations)
    # Unbind once into per-(diagonal, duration) (B, U+1) slices: indexing a big tensor inside the
    # loop would make autograd allocate a full-size zero gradient per slice.
    token_d = _skew(token_w, rows, num_diagonals).permute(1, 3, 0, 2).flatten(0, 1).unbind(0)
    blank_d = _skew(blank_w, rows, num_diagonals).permute(1, 3, 0, 2).flatten(0, 1).unbind(0)
    neg_row = blank_w.new_full((batch, 1), NEG)
    first = torch.cat([torch.zeros_like(neg_row), neg_row.expand(batch, rows - 1)], dim=1)
    alphas = [first]
    for k in range(1, num_diagonals):
        terms = []
        for i, d in enumerate(durations):
            src = k - d - 1  # token arcs come from diagonal k - d - 1, row u - 1
            if src >= 0:
                scored = alphas[src] + token_d[src * num_durations + i]
                terms.append(torch.cat([neg_row, scored[:, :-1]], dim=1))
            src = k - d  # blank arcs come from diagonal k - d, same row
            if d >= 1 and src >= 0:
                terms.append(alphas[src] + blank_d[src * num_durations + i])
        alphas.append(torch.stack(terms, dim=-1).logsumexp(dim=-1).clamp(min=NEG))
    return torch.stack(alphas, dim=1)


def tdt_loss(
    logits: Tensor,
    tokens: Tensor,
    frame_lens: Tensor,
    token_lens: Tensor,
    durations: Sequence[int],
    blank_id: int = 0,
    sigma: float = 0.0,
    reduction: str = "sum",
) -> Tensor:
    """TDT negative log-likelihood (computed in float32, or float64 when given float64).

    Args:
        logits: (B, T, U + 1, V + D) joiner outputs: token logits then duration logits.
        tokens: (B, U) padded token ids. frame_lens: (B,) T_b. token_lens: (B,) U_b.
        durations: the duration of each duration logit, e.g. ``(0, 1, 2, 3, 4)``.
        sigma: logit under-normalisation subtracted from token log-probs (0 disables).
        reduction: ``sum`` (heads' convention) | ``mean`` | ``none``.

    Returns:
        scalar for ``sum``/``mean``, else (B,); ``+inf`` for utterances without a complete
        alignment (module docstring).
    """
    if logits.dim() != 4 or logits.shape[2] != tokens.shape[1] + 1:
        raise ValueError(
            f"logits must be (B, T, U+1, V+D) with U={tokens.shape[1]}, got {tuple(logits.shape)}"
        )
    with torch.autocast(device_type=logits.device.type, enabled=False):
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        if logits.shape[1] == 0:
            return frameless_batch_loss(logits, reduction)
        token_w, blank_w = tdt_lattice_weights(logits, tokens, durations, blank_id, sigma)
        alphas = _tdt_alphas(token_w, blank_w, durations)  # (B, K, U+1)
        batch_index = torch.arange(logits.shape[0], device=logits.device)
        frame_lens = frame_lens.to(logits.device, torch.int64)
        token_lens = token_lens.to(logits.device, torch.int64)
        finals = []
        for i, d in enumerate(durations):
            if d == 0:
                continue
            start = frame_lens - d  # the last blank leaves (T_b - d, U_b)
            ok = start >= 0
            start = start.clamp(min=0)
            score = alphas[batch_index, start + token_lens, token_lens]
            score = score + blank_w[batch_index, start, token_lens, i]
            finals.append(torch.where(ok, score, torch.full_like(score, NEG)))
        total = torch.stack(finals, dim=-1).logsumexp(dim=-1)
        loss = torch.where(total > NEG / 2, -total, torch.full_like(total, float("inf")))
    return reduce_per_utterance(loss, reduction)
