"""Pre-norm Transformer encoder (Vaswani et al., 2017, "Attention Is All You Need"; pre-norm as in
Wang et al., 2019, "Learning Deep Transformer Models for Machine Translation") with the
relative-position attention and chunk masks of :mod:`asr.encoders.attention` and the Conv2d
subsampling of the Conformer.

Each block is ``x + MHSA(LN(x)) -> x + FFN(LN(x))``; a final LayerNorm follows the stack.

Shape legend: B batch, T frames, C cached frames, D model dims.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from asr.encoders.attention import RelativePositions, RelPositionMultiHeadAttention, roll_cache
from asr.encoders.base import EncoderConfig
from asr.encoders.chunked import ChunkedEncoder
from asr.encoders.dropout import Dropout
from asr.encoders.layers import FeedForward, LayerState

__all__ = ["Transformer", "TransformerLayer"]


class TransformerLayer(nn.Module):
    """One pre-norm Transformer block."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(cfg.d_model)
        self.attn = RelPositionMultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.attention_dropout)
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout)
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
        """Applies the block; arguments as :meth:`asr.encoders.conformer.ConformerLayer.forward`."""
        del valid  # attention masks padding; the feed-forward is frame-wise
        key_cache = state.key if state is not None else None
        value_cache = state.value if state is not None else None
        attn_out, key, value = self.attn(
            self.norm_attn(x), mask, rel_pos, key_cache, value_cache
        )
        x = x + self.dropout(attn_out)
        x = x + self.ff(x)
        if state is None or num_new is None:
            return x, None
        new_state = LayerState(
            key=roll_cache(state.key, key, num_new, dim=2),
            value=roll_cache(state.value, value, num_new, dim=2),
        )
        return x, new_state

    def init_state(
        self, batch_size: int, cache_size: int, device: torch.device, dtype: torch.dtype
    ) -> LayerState:
        """Empty cache of ``cache_size`` attention frames."""
        shape = (batch_size, self.attn.num_heads, cache_size, self.attn.head_dim)
        return LayerState(
            key=torch.zeros(shape, device=device, dtype=dtype),
            value=torch.zeros(shape, device=device, dtype=dtype),
        )


class Transformer(ChunkedEncoder):
    """Conv2d subsampling x4, ``cfg.num_layers`` pre-norm blocks and a final LayerNorm.

    Args:
        cfg: encoder config (the convolution fields are ignored).
        input_dim: feature bins F.
    """

    def __init__(self, cfg: EncoderConfig, input_dim: int) -> None:
        layers = [TransformerLayer(cfg) for _ in range(cfg.num_layers)]
        super().__init__(cfg, input_dim, layers)
