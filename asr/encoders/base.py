"""Encoder interfaces and the encoder config (the factory is :func:`asr.encoders.build_encoder`).

One :class:`EncoderConfig` serves both encoders (``kind: conformer | transformer``); fields a kind
does not use (the convolution settings for the Transformer) are ignored. The size presets
``recipes/presets/encoder_{tiny,s,m,l}.yaml`` are files of this config.

Time units: ``chunk_size`` and ``right_context`` count *encoder* frames (after 4x subsampling,
40 ms each for 10 ms features).

Shape legend: B batch, T input frames, T' encoder frames, F feature bins, D output dims.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Encoder", "EncoderConfig", "StreamingEncoder", "zero_padding"]


@dataclass(frozen=True)
class EncoderConfig:
    """Configuration of a Conformer or Transformer encoder.

    Attributes:
        kind: which encoder to build.
        d_model: model dims D (even, divisible by ``num_heads``).
        num_layers: number of blocks.
        num_heads: attention heads.
        ff_dim: hidden size of the feed-forward modules.
        conv_kernel_size: odd depthwise kernel size (Conformer only).
        causal: causal depthwise convolution (Conformer only); required for streaming.
        subsampling_channels: channels of the Conv2d subsampling.
        input_norm: ``global_cmvn`` normalises every feature bin with the mean and standard
            deviation of the training features (:mod:`asr.features.cmvn`; computed when training
            starts and stored with the weights), ``none`` feeds the log-mel values as they are.
        dropout: dropout of residual branches and after subsampling.
        attention_dropout: dropout on attention weights.
        chunk_size: default chunk (encoder frames) for eval ``forward`` and streaming;
            ``<= 0`` means full context.
        left_chunks: default left context in chunks; ``< 0`` unlimited (streams with an
            attention cache that grows with the stream).
        dynamic_chunk_training: in training mode, pick chunk size / left context per batch.
        dynamic_chunk_sizes: chunk sizes drawn from in dynamic chunk training.
        dynamic_left_chunks: left contexts (chunks, ``< 0`` unlimited) drawn from.
        full_context_prob: probability of a full-context batch in dynamic chunk training.
    """

    kind: Literal["conformer", "transformer"] = "conformer"
    d_model: int = 256
    num_layers: int = 12
    num_heads: int = 4
    ff_dim: int = 1024
    conv_kernel_size: int = 31
    causal: bool = True
    subsampling_channels: int = 256
    input_norm: Literal["none", "global_cmvn"] = "none"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    chunk_size: int = 0
    left_chunks: int = -1
    dynamic_chunk_training: bool = False
    dynamic_chunk_sizes: tuple[int, ...] = (4, 8, 16, 32)
    dynamic_left_chunks: tuple[int, ...] = (2, 4, 8, -1)
    full_context_prob: float = 0.25

    def __post_init__(self) -> None:
        if self.d_model <= 0 or self.d_model % 2 != 0:
            raise ValueError(f"d_model={self.d_model}: expected a positive even number")
        if self.num_heads <= 0 or self.d_model % self.num_heads != 0:
            raise ValueError(
                f"num_heads={self.num_heads}: expected a positive divisor of d_model={self.d_model}"
            )
        if self.num_layers < 0:
            raise ValueError(f"num_layers={self.num_layers}: expected >= 0")
        for name in ("ff_dim", "subsampling_channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected a positive number")
        if self.conv_kernel_size < 1 or self.conv_kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size={self.conv_kernel_size}: expected odd >= 1")
        for name in ("dropout", "attention_dropout", "full_context_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)}: expected within [0, 1]")
        if self.dynamic_chunk_training and (
            not self.dynamic_chunk_sizes or any(c <= 0 for c in self.dynamic_chunk_sizes)
        ):
            raise ValueError(
                f"dynamic_chunk_sizes={self.dynamic_chunk_sizes}: expected positive chunk sizes"
            )
        if self.dynamic_chunk_training and not self.dynamic_left_chunks:
            raise ValueError("dynamic_left_chunks: expected at least one value")


@runtime_checkable
class Encoder(Protocol):
    """Maps features to encoder frames."""

    @property
    def output_dim(self) -> int:
        """D."""
        ...

    def forward(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, F) features, (B,) lengths -> (B, T', D) encoder frames, (B,) lengths."""
        ...


@runtime_checkable
class StreamingEncoder(Encoder, Protocol):
    """An encoder that can continue streams chunk by chunk from a cached state."""

    @property
    def chunk_size(self) -> int:
        """Encoder frames per streaming chunk."""
        ...

    @property
    def right_context(self) -> int:
        """Encoder frames of look-ahead beyond a chunk (0: none)."""
        ...

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        """State of ``batch_size`` fresh streams."""
        ...

    def frames_needed(self, state: Any, chunk_size: int | None = None) -> Tensor:
        """(B,) new feature frames each stream needs for its next full chunk (of the chunk
        size the state streams)."""
        ...

    def forward_chunk(
        self, feats: Tensor, feat_lens: Tensor, state: Any
    ) -> tuple[Tensor, Tensor, Any]:
        """(B, T, F) new frames, (B,) counts, state -> (B, T', D), (B,) counts, new state."""
        ...

    def unstack_state(self, state: Any) -> list[Any]:
        """One state per stream of a batched state, each holding only its own memory (no view
        of the batch's tensors, no padding shared with older streams)."""
        ...


def zero_padding(frames: Tensor, lens: Tensor) -> Tensor:
    """(B, T, D) frames, (B,) valid counts -> the frames with zeros beyond each count.

    The one rule for encoder frames handed on (:meth:`asr.model.ASRModel.encode` and
    ``encode_chunk``, each head's ``loss``): nothing reads the padding, but a head multiplies it
    by zero weights (masked attention, the joiner's backward, CTC's gradient), and ``0 * nan``
    or ``0 * inf`` (padding garbage, an fp16 overflow) is NaN, which would reach a loss, every
    weight's gradient or a search.
    """
    positions = torch.arange(frames.shape[1], device=frames.device)
    valid = positions[None, :] < lens.to(frames.device)[:, None]  # (B, T)
    return frames.masked_fill(~valid[:, :, None], 0.0)
