"""The one precision rule of the losses: float32, or float64 when given float64.

Log-likelihood sums over many frames and tokens are too coarse in float16 or bfloat16, so every
loss computes in float32 under autocast; a float64 model (gradient checks, CPU-versus-GPU and
batch-invariance checks to float64 precision) keeps float64 throughout.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["loss_dtype"]


def loss_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype a loss computes in: float64 if any of ``tensors`` is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
