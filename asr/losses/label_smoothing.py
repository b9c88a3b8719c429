"""Label-smoothed token loss for attention (AED) and non-autoregressive (CIF) decoders.

Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer Vision" (label
smoothing). The smoothed target puts ``1 - smoothing`` on the reference token and spreads
``smoothing`` uniformly over the other ``V - 1`` classes, blank and ``<sos/eos>`` included, as
WeNet's and ESPnet's ``LabelSmoothingLoss`` do (icefall's spreads ``smoothing / V`` over all ``V``
classes, the reference too); the loss is KL(target || model), which differs from the smoothed
cross-entropy only by the (constant) target entropy and so reaches 0 when the model matches the
smoothed target. With ``smoothing = 0`` it is the plain cross-entropy.

Shape legend: N positions, V vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from asr.losses.precision import loss_dtype

__all__ = ["check_label_smoothing", "label_smoothing_loss"]


def check_label_smoothing(smoothing: float, name: str = "smoothing") -> None:
    """Raises ``ValueError`` naming ``name`` unless ``smoothing`` is in ``[0, 1)`` (1 leaves the
    reference no mass; NaN or a negative value is no distribution)."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {smoothing}")


def label_smoothing_loss(logits: Tensor, targets: Tensor, smoothing: float = 0.0) -> Tensor:
    """Per-position KL divergence between the smoothed one-hot target and ``softmax(logits)``.

    Args:
        logits: (..., V) unnormalised scores (computed in float32, or float64 if given float64).
        targets: (...) int reference ids in ``[0, V)``.
        smoothing: probability mass moved from the reference to the other ``V - 1`` classes,
            in ``[0, 1)``.

    Returns:
        (...) float32 (float64) loss per position (the caller masks padding and sums).

    Raises:
        ValueError: if ``smoothing`` is outside ``[0, 1)`` or the vocabulary has one class.
    """
    check_label_smoothing(smoothing)
    vocab_size = logits.shape[-1]
    if vocab_size < 2:
        raise ValueError(f"label smoothing needs at least 2 classes, got V={vocab_size}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_probs = torch.log_softmax(logits.to(loss_dtype(logits)), dim=-1)
        target_lp = log_probs.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
        confidence = 1.0 - smoothing
        if smoothing == 0.0:
            return -target_lp
        other = smoothing / (vocab_size - 1)
        entropy_term = confidence * math.log(confidence) + smoothing * math.log(other)
        others_lp = log_probs.sum(dim=-1) - target_lp
        return entropy_term - confidence * target_lp - other * others_lp
