"""Pruned TDT loss: the TDT loss (:mod:`asr.losses.tdt`) with the real joiner on a band of
``prune_range`` token positions per frame, the way pruned RNN-T (Kuang et al. 2022,
arXiv:2206.13236; :mod:`asr.losses.pruned_rnnt`) restricts the RNN-T lattice. NeMo's TDT loss
runs the joiner on the full lattice; this one does not.

Pipeline (what :class:`asr.heads.transducer.TransducerHead` runs for ``loss="pruned_tdt"``):

1. :func:`tdt_loss_simple`: the TDT loss of the additive "trivial joiner": token log-probs
   ``log_softmax(am[t] + lm[u])`` over the vocabulary, exactly as the simple RNN-T loss forms them
   (:func:`asr.losses.pruned_rnnt.simple_lattice_logprobs`: no ``(B, T, U + 1, V)`` tensor, with
   its lm-only / am-only smoothing), and duration log-probs ``log_softmax(am_dur[t] + lm_dur[u])``
   over the ``D`` durations (``(B, T, U + 1, D)``: small). ``am`` and ``lm`` have ``V + D``
   columns. With ``return_grad=True`` it also returns its arc occupations.
2. :func:`tdt_pruning_ranges`: where the path is during each frame: a node's occupation (the
   probability of the arcs leaving it), plus, for an arc of duration ``d >= 2``, the frames it
   jumps over (at row ``u`` for a blank, ``u + 1`` for a token); then
   :func:`asr.losses.pruned_rnnt.pruning_ranges_from_occupation`, the windows and guarantees of
   pruned RNN-T. Result ``ranges (B, T, R)``.
3. :func:`asr.losses.pruned_rnnt.do_rnnt_pruning` and the joiner on the ``(B, T, R)`` band.
4. :func:`tdt_loss_pruned`: log-probs of the band logits, scattered into the arc weights of the
   full lattice (``NEG`` off the band; they have no V dimension, so they are cheap), then the TDT
   recursion (:mod:`asr.losses.tdt_recursion`; Triton on CUDA).

Symbol-delay penalty (``delay_penalty``): added to the token arcs of the simple and of the
pruned loss as :mod:`asr.losses.tdt` adds it, so the band is chosen on the penalised lattice.

Band indexing: an arc's weight lives at its SOURCE node ``(t, u)``, so it is taken from frame
``t``'s band; the token arc of duration ``d`` lands on ``(t + d, u + 1)`` and the blank on
``(t + d, u)``, which go on only if frame ``t + d``'s band holds them (off the band a node has
no outgoing arc), except the end node ``(T_b, U_b)``, which needs none. Scattering the band into
the full lattice expresses exactly that; a path of the pruned lattice is a path of the full one
whose every node but the last is in its frame's band.

Feasibility: the durations must include 0 and 1 (checked; NeMo requires both too). Then the
band holds a complete path whenever ``T_b >= 1`` and ``U_b <= T_b * (R - 1)``, as for pruned
RNN-T: the windows' guarantees give the RNN-T path "emit at frame t up to the window's end
(tokens of duration 0), then a blank of duration 1". Other utterances get ``+inf`` with a zero
gradient (the ``asr.losses`` rule). With ``R >= U + 1`` every window is ``[0, R)`` and the
pruned loss equals the full TDT loss.

Shapes: B batch, T frames, U tokens, V vocab incl. blank (blank_id 0), D durations, R
prune_range.
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
    pruning_ranges_from_occupation,
    reduce_per_utterance,
    rnnt_loss_pruned,
    simple_lattice_logprobs,
    simple_loss_inputs,
)
from asr.losses.tdt import tdt_arc_weights, tdt_nll, tdt_node_logprobs
from asr.losses.tdt_recursion import (
    NEG,
    check_durations,
    tdt_recursion,
    tdt_recursion_with_occupation,
)

__all__ = [
    "check_pruned_durations",
    "tdt_loss_simple",
    "tdt_pruning_ranges",
    "tdt_loss_pruned",
]


def check_pruned_durations(durations: Sequence[int]) -> tuple[int, ...]:
    """Validated durations that include 0 and 1 (module docstring, feasibility)."""
    durations = check_durations(durations)
    if 0 not in durations or 1 not in durations:
        raise ValueError(
            f"the pruned TDT loss needs durations 0 and 1 (a band always holds a path of tokens "
            f"of duration 0 and blanks of duration 1), got {list(durations)}"
        )
    return durations


def _frameless(inputs: Tensor, reduction: str, return_grad: bool, num_tokens: int,
               num_durations: int):
    loss = frameless_batch_loss(inputs, reduction)
    if not return_grad:
        return loss
    batch = inputs.shape[0]
    token_occ = inputs.new_zeros(batch, 0, num_tokens, num_durations)
    return loss, (token_occ, inputs.new_zeros(batch, 0, num_tokens + 1, num_durations))


def tdt_loss_simple(
    am: Tensor,
    lm: Tensor,
    tokens: Tensor,
    frame_lens: Tensor,
    token_lens: Tensor,
    durations: Sequence[int],
    lm_only_scale: float = 0.0,
    am_only_scale: float = 0.0,
    blank_id: int = 0,
    backend: str = "auto",
    reduction: str = "sum",
    return_grad: bool = False,
    *,
    tokens_checked: bool = False,
    delay_penalty: float = 0.0,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """TDT loss of the additive "trivial joiner" over the full lattice (float32 or float64).

    Args:
        am: (B, T, V + D) encoder-side logits. lm: (B, U + 1, V + D) predictor-side logits.
        tokens: (B, U). frame_lens, token_lens: (B,). durations: the D durations.
        lm_only_scale / am_only_scale: smoothing of the token log-probs
            (:func:`asr.losses.pruned_rnnt.simple_lattice_logprobs`).
        backend: TDT recursion backend (``auto | torch | triton``).
        return_grad: also return the detached arc occupations ``(token_occ (B, T, U, D),
            blank_occ (B, T, U + 1, D))`` used by :func:`tdt_pruning_ranges`.
        tokens_checked: the tokens were checked against the vocabulary already (the
            transducer head's, once per batch): padded only, no second check and device sync.
        delay_penalty: symbol-delay penalty of the token arcs (:mod:`asr.losses.delay_penalty`;
            0 = off): the loss and the occupations are those of the penalised lattice.

    Returns:
        the loss (reduced per ``reduction``; ``+inf`` for utterances without a complete
        alignment), and optionally the occupations.
    """
    durations = check_durations(durations)
    num_durations = len(durations)
    num_tokens = tokens.shape[1]
    with torch.autocast(device_type=am.device.type, enabled=False):
        am, lm = simple_loss_inputs(am, lm, frame_lens, token_lens)
        if am.shape[1] == 0:
            return _frameless(am, reduction, return_grad, num_tokens, num_durations)
        vocab_size = am.shape[2] - num_durations
        tokens = blank_padded_tokens(
            tokens, token_lens, blank_id, None if tokens_checked else vocab_size
        )
        px, py = simple_lattice_logprobs(
            am[..., :vocab_size], lm[..., :vocab_size], tokens, frame_lens, lm_only_scale,
            am_only_scale, blank_id,
        )  # fmt: skip
        num_frames = am.shape[1]
        # (B, U, T) -> (B, T, U + 1) with a NEG row for the token that does not exist; -inf
        # where t >= T_b is masked by the recursion
        sym_lp = torch.cat([px[:, :, :num_frames], px.new_full(py[:, :1].shape, NEG)], 1)
        dur_lp = torch.log_softmax(
            am[:, :, None, vocab_size:] + lm[:, None, :, vocab_size:], dim=-1
        )  # (B, T, U + 1, D)
        token_w, blank_w = tdt_arc_weights(
            sym_lp.transpose(1, 2), py.transpose(1, 2), dur_lp, durations
        )
        token_w = add_token_delay_penalty(token_w[:, :, :num_tokens], frame_lens, delay_penalty)
        if not return_grad:
            total = tdt_recursion(token_w, blank_w, frame_lens, token_lens, durations, backend)
            return reduce_per_utterance(tdt_nll(total), reduction)
        total, token_occ, blank_occ = tdt_recursion_with_occupation(
            token_w, blank_w, frame_lens, token_lens, durations, backend
        )
    return reduce_per_utterance(tdt_nll(total), reduction), (token_occ, blank_occ)


@torch.no_grad()
def tdt_pruning_ranges(
    token_occ: Tensor,
    blank_occ: Tensor,
    frame_lens: Tensor,
    token_lens: Tensor,
    durations: Sequence[int],
    prune_range: int,
) -> Tensor:
    """Per-frame token windows ``ranges (B, T, R)`` from TDT arc occupations.

    Args:
        token_occ: (B, T, U, D); blank_occ: (B, T, U + 1, D) (from :func:`tdt_loss_simple`).
        frame_lens, token_lens: (B,). durations: the D durations. prune_range: R >= 2.

    Returns:
        int64 ``ranges``, with the guarantees of
        :func:`asr.losses.pruned_rnnt.get_pruning_ranges` (module docstring, step 2).
    """
    batch, num_frames, rows, _ = blank_occ.shape
    occupation = blank_occ.sum(-1)
    occupation[:, :, :-1] += token_occ.sum(-1)  # node visits: (B, T, U + 1)
    for i, d in enumerate(durations):
        for skipped in range(1, min(d, num_frames)):  # frames t + 1 .. t + d - 1 jumped over
            occupation[:, skipped:, :] += blank_occ[:, : num_frames - skipped, :, i]
            occupation[:, skipped:, 1:] += token_occ[:, : num_frames - skipped, :, i]
    return pruning_ranges_from_occupation(
        occupation.transpose(1, 2), frame_lens, token_lens, prune_range
    )


def _band_to_lattice(band: Tensor, ranges: Tensor, num_rows: int) -> Tensor:
    """``band (B, T, R, D)`` at rows ``ranges (B, T, R)`` -> ``(B, T, num_rows, D)``, ``NEG``
    elsewhere (positions beyond the last row are dropped)."""
    batch, num_frames, _, depth = band.shape
    full = band.new_full((batch, num_frames, num_rows + 1, depth), NEG)
    index = ranges.clamp(max=num_rows)[..., None].expand(band.shape)
    return full.scatter(2, index, band)[:, :, :num_rows]


def tdt_loss_pruned(
    logits: Tensor,
    tokens: Tensor,
    ranges: Tensor,
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
    """TDT loss restricted to the band ``ranges`` (computed in float32, or float64 if given).

    Args:
        logits: (B, T, R, V + D) real-joiner outputs on the band (from
            :func:`asr.losses.pruned_rnnt.do_rnnt_pruning`). tokens: (B, U). ranges: (B, T, R).
        frame_lens, token_lens: (B,). durations: the D durations, including 0 and 1.
        sigma, omega: as in :func:`asr.losses.tdt.tdt_loss` (the RNN-T term of ``omega`` is
            the pruned RNN-T loss on the same band's token logits).
        backend: recursion backend (``auto | torch | triton``).
        tokens_checked, delay_penalty: as in :func:`tdt_loss_simple` (the penalty also in
            the ``omega`` term).

    Returns:
        the negative log-likelihood of the paths inside the band, reduced per ``reduction``
        (``+inf`` where the band holds no path: ``T_b = 0`` or ``U_b > T_b * (R - 1)``).
    """
    durations = check_pruned_durations(durations)
    if not 0.0 <= omega < 1.0:
        raise ValueError(f"omega must be in [0, 1), got {omega}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.to(loss_dtype(logits))
        if logits.shape[1] == 0:
            return frameless_batch_loss(logits, reduction)
        num_tokens = tokens.shape[1]
        vocab_size = logits.shape[-1] - len(durations)
        tokens = blank_padded_tokens(
            tokens, token_lens, blank_id, None if tokens_checked else vocab_size
        )
        padded = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], 1)], 1)
        symbols = torch.gather(padded, 1, ranges.clamp(max=num_tokens).flatten(1))
        sym_lp, blank_lp, dur_lp = tdt_node_logprobs(
            logits, symbols.reshape(ranges.shape), durations, blank_id
        )
        band_token_w, band_blank_w = tdt_arc_weights(sym_lp, blank_lp, dur_lp, durations, sigma)
        token_w = _band_to_lattice(band_token_w, ranges, num_tokens + 1)[:, :, :num_tokens]
        token_w = add_token_delay_penalty(token_w, frame_lens, delay_penalty)
        blank_w = _band_to_lattice(band_blank_w, ranges, num_tokens + 1)
        total = tdt_recursion(token_w, blank_w, frame_lens, token_lens, durations, backend)
        loss = tdt_nll(total)
        if omega > 0.0:
            rnnt = rnnt_loss_pruned(logits[..., :vocab_size], tokens, ranges, frame_lens,
                                    token_lens, blank_id, backend, "none", tokens_checked=True,
                                    delay_penalty=delay_penalty)
            rnnt = torch.where(torch.isfinite(loss), rnnt, torch.zeros_like(rnnt))
            loss = (1.0 - omega) * loss + omega * rnnt
    return reduce_per_utterance(loss, reduction)
