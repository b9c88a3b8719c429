"""Connectionist Temporal Classification loss with an explicit count of impossible utterances.

Graves et al. 2006, "Connectionist Temporal Classification: Labelling Unsegmented Sequence Data
with Recurrent Neural Networks". The forward-backward recursion itself is PyTorch's
(``torch.nn.functional.ctc_loss``, cuDNN or native kernels); this module adds what training
needs around it: float32 computation under autocast, per-utterance losses, and the set of
utterances whose targets cannot be aligned at all.

An alignment of U tokens needs at least ``U + R`` frames, where R counts adjacent repeated
tokens (a blank must separate them), and at least one frame: an utterance without frames is
infeasible even with an empty target, as in every transducer loss (:mod:`asr.losses.rnnt`,
:mod:`asr.losses.pruned_rnnt`, :mod:`asr.losses.tdt`, where no path ends without a last frame
to leave), so that all losses drop the same utterances. Infeasible utterances have an infinite
loss; they are zeroed (no gradient) and reported so the data pipeline can be fixed rather than
the loss silently exploding (the heads count them in ``metrics["num_infinite"]``). A non-empty
utterance with an empty target is feasible (the all-blank alignment).

Shape legend: B batch, T frames, U tokens, V vocabulary including blank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ctc_loss", "ctc_min_frames"]


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
        log_probs: (B, T, V) log-softmax outputs (any float dtype; computed in float32).
        log_prob_lens: (B,) int number of valid frames.
        tokens: (B, U) int target ids without blanks, padded beyond ``token_lens``.
        token_lens: (B,) int number of target tokens.
        blank_id: index of the blank symbol.

    Returns:
        losses: (B,) float32 ``-log P(tokens | log_probs)``; 0 (and no gradient) where infeasible.
        infeasible: (B,) bool, True where no alignment exists (``log_prob_lens`` shorter than
            :func:`ctc_min_frames`, or 0), i.e. where the true loss is infinite.

    Raises:
        ValueError: on inconsistent shapes.
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
    if log_probs.shape[1] == 0:  # no frames in the whole batch: nothing is feasible
        losses = log_probs.float().sum() * log_probs.new_zeros(batch_size, dtype=torch.float32)
        return losses, torch.ones(batch_size, dtype=torch.bool, device=log_probs.device)
    with torch.autocast(device_type=log_probs.device.type, enabled=False):
        losses = F.ctc_loss(
            log_probs.float().transpose(0, 1),
            tokens.long(),
            log_prob_lens.long(),
            token_lens.long(),
            blank=blank_id,
            reduction="none",
            zero_infinity=True,
        )
    lens = log_prob_lens.long().to(losses.device)
    infeasible = (lens < ctc_min_frames(tokens, token_lens).to(lens.device)) | (lens <= 0)
    return losses.masked_fill(infeasible, 0.0), infeasible
