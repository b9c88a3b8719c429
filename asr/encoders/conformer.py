"""Conformer encoder (Gulati et al., 2020, "Conformer: Convolution-augmented Transformer for Speech
Recognition", https://arxiv.org/abs/2005.08100).

Each block is ``x + FFN/2 -> x + MHSA -> x + Conv -> x + FFN/2`` (macaron feed-forward halves),
every module pre-normed, and one LayerNorm follows the stack. Deviations from the paper:

- No LayerNorm at the end of each block (the paper's, ESPnet's and WeNet's "norm_final"): the
  residual stream stays un-normalised between blocks and a single final LayerNorm closes the stack,
  as in a pre-norm Transformer. With the per-block norm, the short, high learning-rate schedules of
  our recipes left the model on the all-blank plateau: on mini_tts (CTC only, 4 layers, d 128,
  Adam 3e-3, 400 steps of 60 s batches) dev CTC loss per utterance was 93.1 with it and 60.4
  without; at 1e-3 it was still 85.5.
- LayerNorm instead of BatchNorm in the convolution module and (with ``causal=True``) a causal
  depthwise convolution whose last ``kernel_size - 1`` inputs are cached, for exact streaming.

Attention is relative-position MHSA with chunk masks (:mod:`asr.encoders.attention`).

Shape legend: B batch, T frames, C cached frames, D model dims.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from asr.encoders.attention import RelativePositions, RelPositionMultiHeadAttention, roll_cache
from asr.encoders.base import EncoderConfig
from asr.encoders.chunked import ChunkedEncoder
from asr.encoders.dropout import Dropout
from asr.encoders.layers import ConvolutionModule, FeedForward, LayerState

__all__ = ["Conformer", "ConformerLayer"]


class ConformerLayer(nn.Module):
    """One Conformer block."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        dim = cfg.d_model
        self.ff_first = FeedForward(dim, cfg.ff_dim, cfg.dropout)
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = RelPositionMultiHeadAttention(dim, cfg.num_heads, cfg.attention_dropout)
        self.conv = ConvolutionModule(dim, cfg.conv_kernel_size, cfg.causal, cfg.dropout)
        self.ff_last = FeedForward(dim, cfg.ff_dim, cfg.dropout)
        self.dim = dim
        self.dropout = Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        rel_pos: RelativePositions,
        valid: Tensor,
        state: LayerState | None = None,
        num_new: Tensor | None = None,
    ) -> tuple[Tensor, LayerState | None]:
        """Applies the block to new frames, continuing ``state`` when given.

        Args:
            x: (B, T, D) input.
            mask: (B, T, C + T) attention mask (C = 0 without state).
            rel_pos: relative positions for T queries after C cached keys.
            valid: (B, T) bool, False on padding.
            state: the layer's cache, or None for a full-sequence pass.
            num_new: (B,) valid new frames; required with ``state``.

        Returns:
            (B, T, D) output and the updated cache (None without ``state``).
        """
        x = x + 0.5 * self.ff_first(x)
        key_cache = state.key if state is not None else None
        value_cache = state.value if state is not None else None
        attn_out, key, value = self.attn(
            self.norm_attn(x), mask, rel_pos, key_cache, value_cache
        )
        x = x + self.dropout(attn_out)
        conv_out, conv_cache = self.conv(
            x, valid, state.conv if state is not None else None, num_new
        )
        x = x + conv_out
        x = x + 0.5 * self.ff_last(x)
        if state is None or num_new is None:
            return x, None
        new_state = LayerState(
            key=roll_cache(state.key, key, num_new, dim=2),
            value=roll_cache(state.value, value, num_new, dim=2),
            conv=conv_cache,
        )
        return x, new_state

    def init_state(
        self, batch_size: int, cache_size: int, device: torch.device, dtype: torch.dtype
    ) -> LayerState:
        """Empty cache of ``cache_size`` attention frames (conv cache = zero left padding)."""
        heads, head_dim = self.attn.num_heads, self.attn.head_dim
        kv_shape = (batch_size, heads, cache_size, head_dim)
        return LayerState(
            key=torch.zeros(kv_shape, device=device, dtype=dtype),
            value=torch.zeros(kv_shape, device=device, dtype=dtype),
            conv=torch.zeros(
                batch_size, self.dim, self.conv.kernel_size - 1, device=device, dtype=dtype
            ),
        )


class Conformer(ChunkedEncoder):
    """Conv2d subsampling x4, ``cfg.num_layers`` Conformer blocks and a final LayerNorm.

    Args:
        cfg: encoder config (``kind`` is not checked here).
        input_dim: feature bins F.
    """

    has_convolution = True

    def __init__(self, cfg: EncoderConfig, input_dim: int) -> None:
        layers = [ConformerLayer(cfg) for _ in range(cfg.num_layers)]
        super().__init__(cfg, input_dim, layers)
