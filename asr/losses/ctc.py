"""Connectionist Temporal Classification loss with an explicit count of impossible utterances.

Graves et al. 2006, "Connectionist Temporal Classification: Labelling Unsegmented Sequence Data
with Recurrent Neural Networks". The forward-backward recursion itself is PyTorch's
(``torch.nn.functional.ctc_loss``, cuDNN or native kernels); this module adds what training
needs around it: float32 computation under autocast (float64 for float64 log-probs,
:func:`asr.losses.precision.loss_dtype`), per-utterance losses, and the set of utterances whose
targets cannot be aligned at all.

An alignment of U tokens needs at least ``U + R`` frames, where R counts adjacent repeated
tokens (a blank must separate them), and at least one frame: an utterance without frames is
infeasible even with an empty target, as in every transducer loss (:mod:`asr.losses.rnnt`,
:mod:`asr.losses.pruned_rnnt`, :mod:`asr.losses.tdt`, where no path ends without a last frame
to leave), so that all losses drop the same utterances. Infeasible utterances have an infinite
loss; they are zeroed (no gradient) and reported so the data pipeline can be fixed rather than
the loss silently exploding (the heads count them in ``metrics["num_infinite"]``). A non-empty
utterance with an empty target is feasible (the all-blank alignment). A target whose every
alignment has probability 0 (``-inf`` log-probs, e.g. a masked token) has an infinite loss too
and is flagged the same way, although PyTorch's ``zero_infinity`` hands it back as a 0.

The Viterbi (forced) alignment of a target, :func:`ctc_forced_align`, is the best path of the
same recursion with ``max`` in place of the sum (Graves et al. 2006, section 4.1's "best path"
restricted to the target's labelling), vectorised over the batch and the 2U + 1 states.

Shape legend: B batch, T frames, U tokens, V vocabulary including blank, S = 2U + 1 states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from asr.losses.precision import loss_dtype
from asr.losses.pruned_rnnt import blank_padded_tokens

__all__ = ["ctc_forced_align", "ctc_loss", "ctc_min_frames"]


def ctc_min_frames(tokens: Tensor, token_lens: Tensor) -> Tensor:
    """Returns the fewest frames a CTC alignment of each target needs.

    Args:
        tokens: (B, U) int token ids, padded beyond ``token_lens``.
        token_lens: (B,) int number of valid tokens.

    Returns:
        (B,) int64 ``token_lens + number of adjacent repeats`` within the valid tokens.
    """
    if tokens.shape[1] < 2:
        return token_lens.long()
    positions = torch.arange(1, tokens.shape[1], device=tokens.device)
    valid_pair = positions[None, :] < token_lens[:, None]
    repeats = ((tokens[:, 1:] == tokens[:, :-1]) & valid_pair).sum(dim=1)
    return token_lens.long() + repeats.long()


def ctc_loss(
    log_probs: Tensor,
    log_prob_lens: Tensor,
    tokens: Tensor,
    token_lens: Tensor,
    blank_id: int = 0,
) -> tuple[Tensor, Tensor]:
    """Per-utterance CTC negative log-likelihood; infeasible utterances give zero.

    Args:
        log_probs: (B, T, V) log-softmax outputs (any float dtype; computed in float32, or
            float64 if given float64).
        log_prob_lens: (B,) int number of valid frames.
        tokens: (B, U) int target ids without blanks, padded beyond ``token_lens``.
        token_lens: (B,) int number of target tokens.
        blank_id: index of the blank symbol.

    Returns:
        losses: (B,) float32 (float64 for float64 ``log_probs``) ``-log P(tokens |
            log_probs)``; 0 (and no gradient) where infeasible.
        infeasible: (B,) bool, True where the true loss is infinite: no alignment exists
            (``log_prob_lens`` shorter than :func:`ctc_min_frames`, or 0), or every alignment
            has probability 0 (``-inf`` log-probs on the way).

    Raises:
        ValueError: on inconsistent shapes, or a token within ``token_lens`` outside ``[0, V)``
            or equal to ``blank_id`` (PyTorch's kernel returns a finite, meaningless loss for
            either).
    """
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (B, T, V), got shape {tuple(log_probs.shape)}")
    batch_size = log_probs.shape[0]
    for name, value in (
        ("log_prob_lens", log_prob_lens),
        ("tokens", tokens),
        ("token_lens", token_lens),
    ):
        if value.shape[0] != batch_size:
            raise ValueError(f"{name} has batch size {value.shape[0]}, expected {batch_size}")
    if log_probs.shape[1] == 0 or batch_size == 0:  # no frames (or no utterance) at all
        dtype = loss_dtype(log_probs)
        losses = log_probs.to(dtype).sum() * log_probs.new_zeros(batch_size, dtype=dtype)
        return losses, torch.ones(batch_size, dtype=torch.bool, device=log_probs.device)
    tokens = blank_padded_tokens(
        tokens, token_lens, blank_id, log_probs.shape[-1], reserved={blank_id: "the blank"}
    )
    with torch.autocast(device_type=log_probs.device.type, enabled=False):
        log_probs = log_probs.to(loss_dtype(log_probs))
        args = (log_probs.transpose(0, 1), tokens, log_prob_lens.long(), token_lens.long())
        losses = F.ctc_loss(*args, blank=blank_id, reduction="none", zero_infinity=True)
        lens = log_prob_lens.long().to(losses.device)
        infeasible = (lens < ctc_min_frames(tokens, token_lens).to(lens.device)) | (lens <= 0)
        # zero_infinity also zeroes the loss of a target whose alignments all have probability
        # 0 (-inf log-probs, e.g. a masked token): find those among the zeros, rare in training
        zeroed = (losses == 0) & ~infeasible
        if bool(zeroed.any()):
            with torch.no_grad():
                raw = F.ctc_loss(*(a.detach() for a in args), blank=blank_id, reduction="none")
            infeasible = infeasible | (zeroed & torch.isinf(raw))
    return losses.masked_fill(infeasible, 0.0), infeasible


@torch.no_grad()
def ctc_forced_align(
    log_probs: Tensor,
    log_prob_lens: Tensor,
    tokens: Tensor,
    token_lens: Tensor,
    blank_id: int = 0,
) -> Tensor:
    """The most probable CTC alignment of each target (Viterbi), as the token of every frame.

    States are the target interleaved with blanks (``blank y_1 blank y_2 ... y_U blank``); a
    path starts in state 0 or 1, moves by 0 or 1 state per frame, or by 2 onto a token that
    differs from the one before it, and ends in state 2U or 2U - 1. Ties prefer staying, then
    the nearer predecessor. Utterances without an alignment (:func:`ctc_min_frames` above their
    frames) get an even split instead: frame t belongs to token ``floor(t * U / T)``.

    Args:
        log_probs: (B, T, V) log-probabilities (any float dtype; computed in float32, or
            float64 if given float64, as the losses: :func:`asr.losses.precision.loss_dtype`).
        log_prob_lens: (B,) int valid frames.
        tokens: (B, U) int target ids without blanks, padded beyond ``token_lens``.
        token_lens: (B,) int number of target tokens.
        blank_id: index of the blank symbol.

    Returns:
        (B, T) int64: per frame the index k in [0, U) of the target token the path emits there,
        -1 on blank frames and beyond ``log_prob_lens``.
    """
    batch, frames, _ = log_probs.shape
    device = log_probs.device
    lens = log_prob_lens.to(device).long()
    token_lens = token_lens.to(device).long()
    states = 2 * tokens.shape[1] + 1
    labels = torch.full((batch, states), blank_id, dtype=torch.long, device=device)
    labels[:, 1::2] = tokens.to(device).long()
    num_states = 2 * token_lens + 1
    state_ids = torch.arange(states, device=device)
    inside = state_ids[None, :] < num_states[:, None]
    # the skip s-2 -> s is allowed onto a token that differs from the previous token
    skip = torch.zeros(batch, states, dtype=torch.bool, device=device)
    skip[:, 3::2] = labels[:, 3::2] != labels[:, 1:-2:2]
    neg_inf = torch.tensor(float("-inf"), dtype=loss_dtype(log_probs), device=device)
    x = log_probs.to(loss_dtype(log_probs))
    x = x.gather(2, labels[:, None, :].expand(batch, frames, states))  # (B, T, S)
    score = torch.where(state_ids[None, :] < 2, x[:, 0], neg_inf) if frames else x.new_empty(0)
    score = score.masked_fill(~inside, float("-inf")) if frames else score
    moves = torch.zeros(frames, batch, states, dtype=torch.long, device=device)
    for t in range(1, frames):
        stay = score
        step = torch.cat([neg_inf.expand(batch, 1), score[:, :-1]], dim=1)
        jump = torch.cat([neg_inf.expand(batch, 2), score], dim=1)[:, :states].masked_fill(
            ~skip, float("-inf")
        )  # score[s - 2]; a single state (no token) has none
        best, move = torch.stack([stay, step, jump]).max(dim=0)  # first maximum on ties
        new = (best + x[:, t]).masked_fill(~inside, float("-inf"))
        running = (t < lens)[:, None]
        score = torch.where(running, new, score)
        moves[t] = torch.where(running, move, 0)
    rows = torch.arange(batch, device=device)
    last = (num_states - 1).clamp(min=0)
    before_last = (num_states - 2).clamp(min=0)
    if frames:
        end_last, end_before = score[rows, last], score[rows, before_last]
        state = torch.where(end_before > end_last, before_last, last)
        feasible = torch.maximum(end_last, end_before) > float("-inf")
    else:
        state, feasible = last, torch.zeros(batch, dtype=torch.bool, device=device)
    path = torch.empty(batch, frames, dtype=torch.long, device=device)
    for t in range(frames - 1, -1, -1):
        path[:, t] = state
        state = state - moves[t, rows, state]
    aligned = torch.where(path % 2 == 1, (path - 1) // 2, -1)
    times = torch.arange(frames, device=device)[None, :]
    even = (times * token_lens[:, None]) // lens.clamp(min=1)[:, None]
    aligned = torch.where(feasible[:, None], aligned, even)
    return aligned.masked_fill(times >= lens[:, None], -1)
