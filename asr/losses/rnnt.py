"""Full RNN-T loss (Graves 2012, "Sequence Transduction with Recurrent Neural Networks",
arXiv:1211.3711) through ``torchaudio.functional.rnnt_loss``.

This is the reference the pruned loss and the TDT loss are tested against, and the speed/memory
peer of ``tools/bench/rnnt_loss.py``. torchaudio only accepts float32/float16 logits, so the
logits are cast to float32 (losses are computed in float32 even under autocast).

Infeasible utterances: every path of the standard lattice ends with the blank that leaves frame
``T_b - 1``, so an utterance without frames (``T_b = 0``) has none, whatever ``U_b``. torchaudio
returns an arbitrary finite number for it (close to 0, or -8e23 beside longer utterances), so
its loss is set to ``+inf`` with a zero gradient, as the pruned, simple and TDT losses do
(:mod:`asr.losses.pruned_rnnt`, :mod:`asr.losses.tdt`); the heads drop such utterances and
count them in ``metrics["num_infinite"]``. Any ``U_b >= 0`` is feasible when ``T_b >= 1`` (an
empty target is the all-blank path).

Symbol-delay penalty (``delay_penalty > 0``, :mod:`asr.losses.delay_penalty`): torchaudio has
none, so the penalised loss runs on our mutual-information recursion instead
(:mod:`asr.losses.mutual_information`, ``backend``): :func:`rnnt_nll_from_logprobs` of each
node's token and blank log-probs (the same NLL that TDT's ``omega`` term takes), computed in
float32, or float64 if given; there is no gradient ``clamp`` on that path. ``delay_penalty = 0`` is
torchaudio's loss, untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor

from asr.losses.delay_penalty import add_delay_penalty, check_delay_penalty
from asr.losses.mutual_information import mutual_information_recursion
from asr.losses.precision import loss_dtype
from asr.losses.pruned_rnnt import (
    blank_padded_tokens,
    frameless_batch_loss,
    gather_log_softmax,
    reduce_per_utterance,
)

__all__ = ["rnnt_loss", "rnnt_nll_from_logprobs"]


def rnnt_loss(
    logits: Tensor,
    tokens: Tensor,
    frame_lens: Tensor,
    token_lens: Tensor,
    blank_id: int = 0,
    clamp: float = -1.0,
    reduction: str = "sum",
    *,
    tokens_checked: bool = False,
    delay_penalty: float = 0.0,
    backend: str = "auto",
) -> Tensor:
    """Negative log-likelihood of the standard RNN-T lattice.

    Args:
        logits: (B, T, U + 1, V) joiner outputs (unnormalised; log-softmax is fused).
        tokens: (B, U) int token ids in ``[0, V)``, any padding value beyond ``token_lens``.
        frame_lens: (B,) valid frames T_b. token_lens: (B,) valid tokens U_b.
        blank_id: blank index (0 everywhere in this toolkit).
        clamp: gradient clamp passed to torchaudio (``-1`` disables it).
        reduction: ``"sum"`` (default, the heads' convention), ``"mean"`` or ``"none"``.
        tokens_checked: the tokens were checked against the vocabulary already (the
            transducer head's, once per batch): padded only, no second check and device sync.
        delay_penalty: symbol-delay penalty per frame (module docstring; 0 = off).
        backend: mutual-information backend of the penalised loss (``auto | torch | triton |
            k2``); unused when ``delay_penalty = 0``.

    Returns:
        scalar for ``sum``/``mean``, else (B,); ``+inf`` for utterances with ``T_b = 0``.

    Raises:
        ValueError: on inconsistent shapes, a token outside ``[0, V)`` (torchaudio returns a
            finite, meaningless loss for it), a negative ``delay_penalty``, or a ``clamp``
            with a ``delay_penalty`` (that path has no gradient clamp).
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be (B, T, U+1, V), got shape {tuple(logits.shape)}")
    if logits.shape[2] != tokens.shape[1] + 1:
        raise ValueError(
            f"logits U+1 dimension is {logits.shape[2]}, expected tokens.shape[1] + 1 = "
            f"{tokens.shape[1] + 1}"
        )
    check_delay_penalty(delay_penalty)
    if delay_penalty != 0.0 and clamp >= 0:
        raise ValueError(
            f"clamp={clamp} needs delay_penalty=0: the penalised loss runs the mutual-information "
            "recursion, which has no gradient clamp (use clamp=-1)"
        )
    import torchaudio.functional as taf

    no_frames = frame_lens.to(logits.device) <= 0
    if logits.shape[1] == 0 or bool(no_frames.all()):  # nothing torchaudio could run on
        return frameless_batch_loss(logits.float(), reduction)
    tokens = blank_padded_tokens(
        tokens, token_lens, blank_id, None if tokens_checked else logits.shape[-1]
    )
    if delay_penalty != 0.0:
        return _penalised_loss(
            logits, tokens, frame_lens, token_lens, blank_id, reduction, delay_penalty, backend
        )
    # Frame-less utterances run on one padding frame (finite, then replaced by inf).
    frame_lens = frame_lens.clamp(min=1)
    # torchaudio insists that the padded sizes equal the longest lengths: trim extra padding.
    max_frames = int(frame_lens.max())
    max_tokens = int(token_lens.max()) if token_lens.numel() else 0
    logits = logits[:, :max_frames, : max_tokens + 1]
    tokens = tokens[:, :max_tokens]

    with torch.autocast(device_type=logits.device.type, enabled=False):
        losses = taf.rnnt_loss(
            logits.float().contiguous(),
            tokens.to(torch.int32).contiguous(),
            frame_lens.to(torch.int32),
            token_lens.to(torch.int32),
            blank=blank_id,
            clamp=clamp,
            reduction="none",
        )
    losses = losses.masked_fill(no_frames, float("inf"))
    return reduce_per_utterance(losses, reduction)


def _penalised_loss(
    logits: Tensor,
    tokens: Tensor,
    frame_lens: Tensor,
    token_lens: Tensor,
    blank_id: int,
    reduction: str,
    delay_penalty: float,
    backend: str,
) -> Tensor:
    """The full loss with the symbol-delay penalty, on the mutual-information recursion (module
    docstring): :func:`rnnt_nll_from_logprobs` of the nodes' token and blank log-probs. Shapes
    as in :func:`rnnt_loss`; ``tokens`` blank-padded."""
    batch, num_frames, rows, _ = logits.shape
    frame_lens = frame_lens.to(logits.device)
    token_lens = token_lens.to(logits.device)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.to(loss_dtype(logits))
        # the token after node u at every node (any id at the last one, whose is dropped)
        padded = torch.cat([tokens.to(torch.int64), tokens.new_zeros(batch, 1).long()], dim=1)
        symbols = padded[:, None, :].expand(batch, num_frames, rows)
        index = torch.stack([symbols, torch.full_like(symbols, blank_id)], dim=-1)
        sym_lp, blank_lp = gather_log_softmax(logits, index).unbind(-1)  # (B, T, U + 1) each
        losses = rnnt_nll_from_logprobs(
            sym_lp[:, :, :-1], blank_lp, frame_lens, token_lens, backend, delay_penalty
        )
    return reduce_per_utterance(losses, reduction)


def rnnt_nll_from_logprobs(
    sym_lp: Tensor, blank_lp: Tensor, frame_lens: Tensor, token_lens: Tensor,
    backend: str = "auto", delay_penalty: float = 0.0,
) -> Tensor:
    """Plain RNN-T negative log-likelihood from per-node token and blank log-probs.

    Args:
        sym_lp: (B, T, U) ``log P(y[u] | t, u)``. blank_lp: (B, T, U + 1). frame_lens,
            token_lens: (B,).
        backend: mutual-information backend (``auto | torch | triton``).
        delay_penalty: symbol-delay penalty (:mod:`asr.losses.delay_penalty`; 0 = off).

    Returns:
        (B,) ``-log P(y)`` over the standard RNN-T lattice; ``+inf`` without frames.
    """
    batch, num_frames, num_tokens = sym_lp.shape
    frame_ok = torch.arange(num_frames, device=sym_lp.device)[None, :] < frame_lens[:, None]
    px = sym_lp.masked_fill(~frame_ok[:, :, None], float("-inf")).transpose(1, 2)
    px = torch.cat([px, px.new_full((batch, num_tokens, 1), float("-inf"))], dim=2)
    px = add_delay_penalty(px, frame_lens, delay_penalty)
    total = mutual_information_recursion(
        px, blank_lp.transpose(1, 2), token_lens, frame_lens, backend
    )
    return (-total).masked_fill(frame_lens <= 0, float("inf"))
