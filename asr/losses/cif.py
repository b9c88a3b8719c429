"""Quantity loss and target-length scaling of CIF weights.

Dong & Xu 2020, "CIF: Continuous Integrate-and-Fire for End-to-End Speech Recognition"
(quantity loss, scaling of the weights to the target length during training); Gao et al. 2022,
"Paraformer: Fast and Accurate Parallel Transformer for Non-autoregressive End-to-End Speech
Recognition" (the same, as the MAE predictor loss).

The integrate-and-fire itself is :func:`asr.heads.cif.cif`.

Shape legend: B batch, T frames.
"""

from __future__ import annotations

import torch
from torch import Tensor

from asr.losses.precision import loss_dtype

__all__ = ["quantity_loss", "scale_alphas"]


def quantity_loss(alphas: Tensor, token_lens: Tensor) -> Tensor:
    """Per-utterance ``|sum_t alphas - U|``: teaches the weights to sum to the token count.

    Args:
        alphas: (B, T) non-negative weights, already zero beyond each utterance's frames.
        token_lens: (B,) int number of target tokens U.

    Returns:
        (B,) float32 absolute differences (float64 for float64 ``alphas``).
    """
    _check(alphas, token_lens)
    dtype = loss_dtype(alphas)
    return (alphas.to(dtype).sum(dim=1) - token_lens.to(dtype)).abs()


def scale_alphas(alphas: Tensor, token_lens: Tensor, eps: float = 1e-6) -> Tensor:
    """Rescales each row of ``alphas`` to sum to its target length (teacher forcing of CIF).

    ``alphas * U / sum(alphas)``, so that integrate-and-fire fires exactly U times during
    training whatever the predictor currently says. Gradients flow through both factors.

    Args:
        alphas: (B, T) non-negative weights, zero beyond each utterance's frames.
        token_lens: (B,) int number of target tokens U.
        eps: floor of the denominator (an all-zero row stays all-zero).

    Returns:
        (B, T) rescaled weights, same dtype as ``alphas``.
    """
    _check(alphas, token_lens)
    total = alphas.sum(dim=1, keepdim=True).clamp(min=eps)
    return alphas * (token_lens.to(alphas.dtype).unsqueeze(1) / total)


def _check(alphas: Tensor, token_lens: Tensor) -> None:
    if alphas.dim() != 2 or token_lens.shape != alphas.shape[:1]:
        raise ValueError(
            f"expected alphas (B, T) and token_lens (B,), got {tuple(alphas.shape)} and "
            f"{tuple(token_lens.shape)}"
        )
    if torch.is_floating_point(token_lens):
        raise ValueError("token_lens must be an integer tensor")
