"""Building blocks shared by the encoders: feed-forward module, convolution module, layer state.

The convolution module is the Conformer's (Gulati et al., 2020, "Conformer: Convolution-augmented
Transformer for Speech Recognition", section 2.2) with LayerNorm in place of BatchNorm, so that a
frame's output never depends on other utterances or on padding, and with an optional *causal*
depthwise convolution whose last ``kernel_size - 1`` inputs are cached for streaming.

Shape legend: B batch, T frames, C cached frames, H heads, D model dims, Dh = D / H,
K convolution kernel size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from asr.encoders.attention import roll_cache
from asr.encoders.dropout import Dropout
from asr.state import state_field

__all__ = ["ConvolutionModule", "FeedForward", "LayerState"]


@dataclass(frozen=True)
class LayerState:
    """Streaming cache of one encoder layer.

    Attributes:
        key: (B, H, C, Dh) attention keys of the last C frames (right-aligned; the valid count is
            the encoder state's ``attn_cache_len``). With unlimited left context C grows with
            the stream, so it is ragged: stacking streams of different ages left-pads it.
        value: (B, H, C, Dh) attention values of the same frames.
        conv: (B, D, K - 1) last inputs of the causal depthwise convolution (zeros at the stream
            start, which is the full pass's left padding), or None for layers without one.
    """

    key: Tensor = state_field(batch_dim=0, ragged_dim=2)
    value: Tensor = state_field(batch_dim=0, ragged_dim=2)
    conv: Tensor | None = state_field(batch_dim=0, default=None)


class FeedForward(nn.Module):
    """LayerNorm -> Linear -> Swish -> Dropout -> Linear -> Dropout (pre-norm)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden_dim),
            nn.SiLU(),
            Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        return self.net(x)


class ConvolutionModule(nn.Module):
    """LayerNorm -> pointwise conv (GLU) -> depthwise conv -> LayerNorm -> Swish -> pointwise.

    Args:
        dim: model dims D.
        kernel_size: odd depthwise kernel size K.
        causal: left-only depthwise convolution (required for streaming); otherwise centred.
        dropout: output dropout.
    """

    def __init__(self, dim: int, kernel_size: int, causal: bool, dropout: float) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ConvolutionModule: kernel_size={kernel_size}, expected odd >= 1")
        self.kernel_size = kernel_size
        self.causal = causal
        self.norm_in = nn.LayerNorm(dim)
        self.pointwise_in = nn.Linear(dim, 2 * dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, groups=dim)
        self.norm_mid = nn.LayerNorm(dim)
        self.pointwise_out = nn.Linear(dim, dim)
        self.dropout = Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        valid: Tensor,
        cache: Tensor | None = None,
        num_new: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Applies the module, optionally continuing a stream.

        Args:
            x: (B, T, D) input.
            valid: (B, T) bool, False on padding (zeroed before the depthwise convolution).
            cache: (B, D, K - 1) previous inputs of the depthwise conv (causal only), or None.
            num_new: (B,) valid frames of ``x``; required with ``cache``.

        Returns:
            (B, T, D) output and the updated cache (None without ``cache``).
        """
        hidden = nn.functional.glu(self.pointwise_in(self.norm_in(x)), dim=-1)
        hidden = hidden.masked_fill(~valid[:, :, None], 0.0).transpose(1, 2)  # (B, D, T)
        new_cache = None
        if cache is not None:
            if not self.causal or num_new is None:
                raise ValueError("ConvolutionModule: a cache needs causal=True and num_new")
            padded = torch.cat([cache.to(hidden.dtype), hidden], dim=2)
            if self.kernel_size > 1:
                new_cache = roll_cache(cache, hidden, num_new, dim=2)
            else:
                new_cache = cache
        elif self.causal:
            padded = nn.functional.pad(hidden, (self.kernel_size - 1, 1))
        else:
            half = (self.kernel_size - 1) // 2
            padded = nn.functional.pad(hidden, (half, half + 1))
        # Without a cache, one zero frame more than the kernel needs, so that it fits even when
        # T = 0 (a batch shorter than the subsampling's window) with no branch on the shape,
        # which an ONNX trace would freeze; its output frame, the last, is dropped.
        hidden = self.depthwise(padded)[:, :, : x.shape[1]].transpose(1, 2)  # (B, T, D)
        hidden = nn.functional.silu(self.norm_mid(hidden))
        return self.dropout(self.pointwise_out(hidden)), new_cache
