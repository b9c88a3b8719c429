"""Token-and-Duration Transducer (TDT) loss (Xu et al. 2023, "Efficient Sequence Transduction by
Jointly Predicting Tokens and Durations", arXiv:2304.06795).

The joiner emits ``V`` token logits plus ``D = len(durations)`` duration logits per lattice node
``(t, u)``. Token and duration distributions are independent log-softmaxes. From node ``(t, u)``
(``t`` frames and ``u`` tokens consumed; arcs leave only nodes with ``t < T_b``):

* emit token ``y[u]`` with duration ``d``: to ``(t + d, u + 1)``, weight
  ``log P_tok(y[u] | t, u) - sigma + log P_dur(d | t, u)``; ``d = 0`` is allowed for tokens;
* emit blank with duration ``d >= 1``: to ``(t + d, u)``, weight
  ``log P_tok(blank | t, u) - sigma + log P_dur(d | t, u)``. Blank never takes duration 0 (its
  mass on ``d = 0`` is lost, not renormalised, as in the paper and NeMo).

A path must END WITH A BLANK landing exactly on ``(T_b, U_b)``; landing past ``T_b`` or ending
on a token is not a complete alignment. The recursion over this lattice is
:mod:`asr.losses.tdt_recursion` (PyTorch, or the Triton kernel of :mod:`asr.losses.tdt_triton`
on CUDA; ``backend``).

Options of the paper (section 3.3), both off by default; NeMo's TDT recipes use
``sigma = 0.05`` and ``omega = 0.1``:

* ``sigma``: logit under-normalisation, subtracted from every token log-prob of the TDT term.
* ``omega``: the weight of the plain RNN-T loss on the same token logits (durations ignored,
  no ``sigma``; one symbol per arc, the standard topology of :mod:`asr.losses.mutual_information`):
  ``loss = (1 - omega) * tdt + omega * rnnt``. NeMo samples instead: each batch is trained with
  the RNN-T loss with probability ``omega`` and with the TDT loss otherwise
  (``GPUTDT.compute_cost_and_score`` in ``nemo/collections/asr/parts/numba/rnnt_loss``), whose
  expectation is this mixture; computing the expectation keeps training deterministic and
  costs one more (cheap: no V dimension) recursion.

``delay_penalty`` (:mod:`asr.losses.delay_penalty`, 0 = off): k2's symbol-delay penalty,
extended to TDT: a token arc leaving ``(t, u)`` gets ``delay_penalty * ((T_b - 1) / 2 - t)``,
whatever its duration (it is emitted at frame ``t``); the ``omega`` term is penalised as the
RNN-T loss is. Neither k2 nor NeMo has a TDT delay penalty to compare with.

Infeasible utterances (no complete alignment: ``T_b = 0``; more tokens than the durations can
place, e.g. ``U_b >= T_b`` without duration 0; a ``T_b`` that no sum of the positive durations
reaches) get a per-utterance loss of ``+inf`` with a zero gradient, as in the RNN-T losses
(:mod:`asr.losses.rnnt`, :mod:`asr.losses.pruned_rnnt`), also with ``omega > 0``; the heads
drop them and count them in ``metrics["num_infinite"]``. An empty target is feasible whenever
blanks can cover ``T_b``.

Shapes: B batch, T frames, U tokens, V vocab incl. blank (blank_id 0), D durations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from asr.losses.delay_penalty import add_token_delay_penalty
from asr.losses.precision import loss_dtype
from asr.losses.pruned_rnnt import (
    blank_padded_tokens,
    frameless_batch_loss,
    gather_log_softmax,
    reduce_per_utterance,
)
from asr.losses.rnnt import rnnt_nll_from_logprobs
from asr.losses.tdt_recursion import NEG, check_durations, tdt_recursion

__all__ = [
    "tdt_loss",
    "tdt_node_logprobs",
    "tdt_arc_weights",
    "tdt_lattice_weights",
    "tdt_nll",
]


def tdt_node_logprobs(
    logits: Tensor, tokens: Tensor, durations: Sequence[int], blank_id: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-node log-probabilities of the next token, of blank, and of each duration.

    Args:
        logits: (B, T', R, V + D) joiner outputs at R token positions per frame. tokens: (B, R)
            or (B, T', R): the token id at each of those positions (any id where there is none).
        durations: the D durations (validated here).

    Returns:
        ``sym_lp (B, T', R)`` (``log P_tok(tokens[r])``), ``blank_lp (B, T', R)`` and
        ``dur_lp (B, T', R, D)``. Only two token log-probs per node are gathered against the
        normaliser: no ``(B, T', R, V)`` log-softmax is materialised.
    """
    durations = check_durations(durations)
    num_durations = len(durations)
    if logits.shape[-1] <= num_durations:
        raise ValueError(
            f"logits last dim {logits.shape[-1]} must be V + len(durations) with "
            f"durations={list(durations)}"
        )
    vocab_size = logits.shape[-1] - num_durations
    dur_lp = torch.log_softmax(logits[..., vocab_size:], dim=-1)
    symbols = tokens.to(torch.int64)
    symbols = (symbols[:, None, :] if symbols.dim() == 2 else symbols).expand(logits.shape[:3])
    index = torch.stack([symbols, torch.full_like(symbols, blank_id)], dim=-1)
    sym_lp, blank_lp = gather_log_softmax(logits, index, vocab_size).unbind(-1)
    return sym_lp, blank_lp, dur_lp


def tdt_arc_weights(
    sym_lp: Tensor, blank_lp: Tensor, dur_lp: Tensor, durations: Sequence[int], sigma: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Arc log-weights from node log-probs (any layout ``(B, T', R)``).

    Returns:
        ``token_w (B, T', R, D)`` (``sym_lp - sigma + dur_lp``) and ``blank_w (B, T', R, D)``
        (``blank_lp - sigma + dur_lp``, ``NEG`` where the duration is 0).
    """
    token_w = (sym_lp - sigma)[..., None] + dur_lp
    zero_duration = torch.tensor([d == 0 for d in durations], device=dur_lp.device)
    blank_w = ((blank_lp - sigma)[..., None] + dur_lp).masked_fill(zero_duration, NEG)
    return token_w, blank_w


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
    padded = torch.cat([tokens.to(torch.int64), tokens.new_zeros(tokens.shape[0], 1).long()], 1)
    sym_lp, blank_lp, dur_lp = tdt_node_logprobs(logits, padded, durations, blank_id)
    token_w, blank_w = tdt_arc_weights(sym_lp, blank_lp, dur_lp, durations, sigma)
    return token_w[:, :, :-1], blank_w


def tdt_nll(total: Tensor) -> Tensor:
    """(B,) recursion totals -> negative log-likelihoods, ``+inf`` where no path exists."""
    return torch.where(total > NEG / 2, -total, torch.full_like(total, float("inf")))


def tdt_loss(
    logits: Tensor,
    tokens: Tensor,
    frame_lens: Tensor,
    token_lens: Tensor,
    durations: Sequence[int],
    blank_id: int = 0,
    sigma: float = 0.0,
    reduction: str = "sum",
    *,
    omega: float = 0.0,
    backend: str = "auto",
    tokens_checked: bool = False,
    delay_penalty: float = 0.0,
) -> Tensor:
    """TDT negative log-likelihood (computed in float32, or float64 when given float64).

    Args:
        logits: (B, T, U + 1, V + D) joiner outputs: token logits then duration logits.
        tokens: (B, U) token ids, any padding value. frame_lens: (B,) T_b. token_lens: (B,) U_b.
        durations: the duration of each duration logit, e.g. ``(0, 1, 2, 3, 4)``.
        sigma: logit under-normalisation subtracted from token log-probs (0 disables).
        reduction: ``sum`` (heads' convention) | ``mean`` | ``none``.
        omega: weight of the plain RNN-T loss on the token logits, in ``[0, 1)`` (module
            docstring; 0 disables).
        backend: recursion backend ``auto | torch | triton`` (TDT and, with ``omega``, RNN-T).
        tokens_checked: the tokens were checked against the vocabulary already (the
            transducer head's, once per batch): padded only, no second check and device sync.
        delay_penalty: symbol-delay penalty per frame of each token arc's emission frame
            (:mod:`asr.losses.delay_penalty`; 0 = off), in the TDT and the ``omega`` term.

    Returns:
        scalar for ``sum``/``mean``, else (B,); ``+inf`` for utterances without a complete
        alignment (module docstring).
    """
    if logits.dim() != 4 or logits.shape[2] != tokens.shape[1] + 1:
        raise ValueError(
            f"logits must be (B, T, U+1, V+D) with U={tokens.shape[1]}, got {tuple(logits.shape)}"
        )
    if not 0.0 <= omega < 1.0:
        raise ValueError(f"omega must be in [0, 1), got {omega}")
    durations = check_durations(durations)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.to(loss_dtype(logits))
        if logits.shape[1] == 0:
            return frameless_batch_loss(logits, reduction)
        frame_lens = frame_lens.to(logits.device, torch.int64)
        token_lens = token_lens.to(logits.device, torch.int64)
        vocab_size = logits.shape[-1] - len(durations)
        tokens = blank_padded_tokens(
            tokens, token_lens, blank_id, None if tokens_checked else vocab_size
        )
        padded = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], 1)], 1)
        sym_lp, blank_lp, dur_lp = tdt_node_logprobs(logits, padded, durations, blank_id)
        token_w, blank_w = tdt_arc_weights(sym_lp, blank_lp, dur_lp, durations, sigma)
        token_w = add_token_delay_penalty(token_w[:, :, :-1], frame_lens, delay_penalty)
        total = tdt_recursion(token_w, blank_w, frame_lens, token_lens, durations, backend)
        loss = tdt_nll(total)
        if omega > 0.0:
            rnnt = rnnt_nll_from_logprobs(
                sym_lp[:, :, :-1], blank_lp, frame_lens, token_lens, backend, delay_penalty
            )
            # +inf with a zero gradient where the TDT lattice has no path, whatever the RNN-T one
            rnnt = torch.where(torch.isfinite(loss), rnnt, torch.zeros_like(rnnt))
            loss = (1.0 - omega) * loss + omega * rnnt
    return reduce_per_utterance(loss, reduction)
