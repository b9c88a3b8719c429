"""The layer stack shared by the Conformer and Transformer encoders: masks, dynamic chunk
training and chunk-by-chunk streaming on a cached state.

Dynamic chunk training follows Zhang et al. (2020, "Unified Streaming and Non-streaming Two-pass
End-to-end Model for Speech Recognition"): in training mode each batch draws its chunk size from
``EncoderConfig.dynamic_chunk_sizes`` (or full context with probability ``full_context_prob``) and
its left context from ``dynamic_left_chunks``, so one model serves several latencies. The draw uses
``torch``'s global generator (seeded runs are reproducible).

Streaming contract (``forward_chunk``): feed each stream the next feature frames. To reproduce the
full ``forward(..., chunk_size=c, left_chunks=l)`` exactly, start from
``init_state(..., left_chunks=l, chunk_size=c)`` and feed ``frames_needed(state)`` frames per
call (``4c + 3`` at the start, ``4c`` afterwards; the state knows its ``c``), and whatever is
left at the end. All frames produced by one call form one chunk (they see each other), plus the
valid cached frames.

The attention cache holds the last ``l * c`` encoder frames of each layer. With unlimited left
context (``l < 0``, WeNet's ``num_decoding_left_chunks=-1``) it holds every earlier frame and
grows with the stream: memory and the cost of a chunk grow linearly with the stream's length.
``init_state(..., max_left_chunks=m)`` bounds that growth: the cache grows as before up to
``m * c`` frames and then slides (the last ``m * c`` kept). A stream of at most ``(m + 1) * c``
encoder frames is then the unlimited one, and any stream fed one chunk per call is
``forward(..., chunk_size=c, left_chunks=m)``, both up to float rounding (a chunk's attention
spans cache slots of another number, which some CPUs' kernels round differently); only the
memory differs from starting with ``left_chunks=m``: a young stream's cache holds its own
frames, not ``m * c`` slots.
Streams of different ages still share a batch: their caches are left-padded to the longest
(:func:`asr.state.stack_states` pads the ragged key/value fields) and the padding is masked by
``attn_cache_len``; each call trims the batch's caches to the longest valid one, and
:meth:`ChunkedEncoder.unstack_state` gives each stream back only its own frames, in tensors of
its own (a stream waiting for audio holds no other stream's memory).

Shape legend: B batch, T input frames, T' encoder frames, F feature bins, C cached frames,
D model dims.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

import torch
from torch import Tensor, nn

from asr.encoders.attention import (
    RelativePositions,
    chunk_attention_mask,
    streaming_attention_mask,
)
from asr.encoders.base import EncoderConfig, zero_padding
from asr.encoders.dropout import Dropout
from asr.encoders.layers import LayerState
from asr.encoders.subsampling import (
    RECEPTIVE_FIELD,
    SUBSAMPLING_FACTOR,
    Conv2dSubsampling,
    SubsamplingState,
    check_features,
    frames_needed,
    subsampled_length,
)
from asr.features.cmvn import GlobalCMVN
from asr.state import state_field, unstack_states

__all__ = ["ChunkedEncoder", "EncoderState", "StreamingLayer"]


@dataclass(frozen=True)
class EncoderState:
    """Streaming state of a :class:`ChunkedEncoder` for B streams.

    Attributes:
        subsampling: pending input frames of the subsampling.
        layers: one cache per layer.
        attn_cache_len: (B,) valid cached attention frames (at most C, the cache size).
        processed_frames: (B,) encoder frames emitted so far.
        cache_limit: the most attention frames cached, ``left_chunks * chunk_size``, or None
            for unlimited left context (the cache grows; C is the batch's longest cache).
            Only states with the same limit stack.
        growth_limit: with a growing cache (``cache_limit`` None), the most frames it grows to
            (``max_left_chunks * chunk_size``), past which it slides; None: it grows for as
            long as the stream lives. Only states with the same limit stack.
        chunk_size: the encoder frames per chunk the state streams
            (:meth:`ChunkedEncoder.frames_needed` feeds its chunks); None for a state made
            without it. Only states with the same chunk size stack.
    """

    subsampling: SubsamplingState
    layers: tuple[LayerState, ...]
    attn_cache_len: Tensor = state_field(batch_dim=0)
    processed_frames: Tensor = state_field(batch_dim=0)
    cache_limit: int | None
    growth_limit: int | None = None
    chunk_size: int | None = None


class StreamingLayer(Protocol):
    """One encoder block that can run on a full sequence or continue a stream."""

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        rel_pos: RelativePositions,
        valid: Tensor,
        state: LayerState | None = None,
        num_new: Tensor | None = None,
    ) -> tuple[Tensor, LayerState | None]: ...

    def init_state(
        self, batch_size: int, cache_size: int, device: torch.device, dtype: torch.dtype
    ) -> LayerState: ...


class ChunkedEncoder(nn.Module):
    """Conv2d subsampling, a stack of pre-norm rel-pos attention layers and a final LayerNorm.

    Args:
        cfg: encoder config.
        input_dim: feature bins F.
        layers: the blocks (each a :class:`StreamingLayer`).
    """

    #: Whether the blocks hold a depthwise convolution, which streams only when causal.
    has_convolution: ClassVar[bool] = False
    #: Input feature frames per encoder frame.
    subsampling_factor: ClassVar[int] = SUBSAMPLING_FACTOR

    #: Encoder frames for a number of feature frames (ints or integer tensors).
    output_length = staticmethod(subsampled_length)

    @classmethod
    def streaming_problem(
        cls, cfg: EncoderConfig, chunk_size: int | None = None, left_chunks: int | None = None
    ) -> str | None:
        """Why ``cfg`` with this chunking (default: the config's) cannot stream, or None."""
        chunk_size = cfg.chunk_size if chunk_size is None else chunk_size
        left_chunks = cfg.left_chunks if left_chunks is None else left_chunks
        if chunk_size <= 0:
            return (
                f"streaming needs chunk_size > 0, got chunk_size={chunk_size} (set "
                f"EncoderConfig or pass it)"
            )
        if cls.has_convolution and not cfg.causal:
            return f"streaming a {cls.__name__} needs EncoderConfig.causal=true"
        return None

    def __init__(self, cfg: EncoderConfig, input_dim: int, layers: list[nn.Module]) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_dim = input_dim
        self.input_norm = GlobalCMVN(input_dim) if cfg.input_norm == "global_cmvn" else None
        self.subsampling = Conv2dSubsampling(input_dim, cfg.d_model, cfg.subsampling_channels)
        self.dropout = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(layers)
        self.final_norm = nn.LayerNorm(cfg.d_model)

    @property
    def output_dim(self) -> int:
        return self.cfg.d_model

    @property
    def chunk_size(self) -> int:
        return self.cfg.chunk_size

    @property
    def right_context(self) -> int:
        return 0

    def context_chunks(self, chunk_size: int, left_chunks: int) -> float:
        """Chunks before its own that an encoder frame depends on through every layer under
        this chunking: each layer reads ``left_chunks`` chunks of the layer below, and a causal
        convolution ``ceil((kernel - 1) / chunk_size)`` more (``math.inf`` for unlimited left
        context, ``left_chunks < 0``). Only meaningful for a chunking that streams
        (:meth:`streaming_problem` is None): a frame under full context sees every frame."""
        if left_chunks < 0:
            return math.inf
        reach = left_chunks
        if self.has_convolution:
            reach += -(-(self.cfg.conv_kernel_size - 1) // chunk_size)
        return self.cfg.num_layers * reach

    @property
    def feature_lookahead(self) -> int:
        """The last feature frame that a chunk's last encoder frame reads, counted from the end
        of the chunk (its encoder frames x the subsampling factor: the first feature frame after
        it), which is frame 0: the subsampling's reach (``RECEPTIVE_FIELD`` frames from its own
        first one) and the right context."""
        factor = self.subsampling_factor
        return RECEPTIVE_FIELD - 1 - factor + factor * self.right_context

    def _chunking(self, chunk_size: int | None, left_chunks: int | None) -> tuple[int, int]:
        """Explicit arguments win; then dynamic draws in training; then config defaults."""
        cfg = self.cfg
        if chunk_size is None and self.training and cfg.dynamic_chunk_training:
            if float(torch.rand(())) < cfg.full_context_prob:
                chunk_size = 0
            else:
                chunk_size = cfg.dynamic_chunk_sizes[_draw(len(cfg.dynamic_chunk_sizes))]
            if left_chunks is None:
                left_chunks = cfg.dynamic_left_chunks[_draw(len(cfg.dynamic_left_chunks))]
        chunk_size = cfg.chunk_size if chunk_size is None else chunk_size
        left_chunks = cfg.left_chunks if left_chunks is None else left_chunks
        return chunk_size, left_chunks

    def _features(self, feats: Tensor, feat_lens: Tensor) -> Tensor:
        """The features as the subsampling reads them, in :meth:`forward` and
        :meth:`forward_chunk` alike: checked, in the encoder's dtype (float32 features into a
        float64 or bfloat16 encoder), normalised (``input_norm``), and zero beyond ``feat_lens``.

        The padding (anything: NaN, inf, a value that overflows) would otherwise reach the
        subsampling convolutions, whose weight gradients sum over every position: ``0 * nan``
        is NaN, a non-finite gradient the trainer skips the step for, although no output frame
        reads the padding.

        Args:
            feats: (B, T, F) features.
            feat_lens: (B,) valid frames.

        Returns:
            (B, T, F) features.

        Raises:
            ValueError: as :meth:`forward`.
        """
        check_features(feats, feat_lens, self.input_dim, type(self).__name__)
        feats = feats.to(self.subsampling.conv[0].weight.dtype)
        if self.input_norm is not None:
            feats = self.input_norm(feats)
        return zero_padding(feats, feat_lens)

    def forward(
        self,
        feats: Tensor,
        feat_lens: Tensor,
        chunk_size: int | None = None,
        left_chunks: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Encodes whole utterances under a chunk mask.

        Args:
            feats: (B, T, F) features, in any float dtype (cast to the encoder's); what lies
                beyond ``feat_lens`` (NaN included) reaches no output frame and no gradient.
            feat_lens: (B,) valid frames.
            chunk_size: encoder frames per chunk (``<= 0``: full context); default: a dynamic
                draw in training with dynamic chunk training, else ``cfg.chunk_size``.
            left_chunks: chunks of left context (``< 0``: unlimited); default as above.

        Returns:
            (B, T', D) encoder frames (zero beyond the lengths) and (B,) lengths T'.

        Raises:
            ValueError: when ``feats`` is not (B, T, F) or ``feat_lens`` not (B,) counts
                within [0, T].
        """
        feats = self._features(feats, feat_lens)
        x, enc_lens = self.subsampling(feats, feat_lens, check=False)  # checked above
        # The frames beyond each length also read valid frames (their windows straddle the
        # end) and the convolutions' biases. Attention masks them as keys but still multiplies
        # their values by weight 0; from zeros they stay finite through the layers.
        x = zero_padding(x, enc_lens)
        chunk_size, left_chunks = self._chunking(chunk_size, left_chunks)
        num_frames = x.shape[1]
        # every input shorter than the subsampling's receptive field. A trace (the ONNX export)
        # freezes this branch untaken: its graph runs the layers on no frame, which onnxruntime
        # does (PyTorch raises in the relative positions of no query)
        if num_frames == 0:
            return x.new_zeros(x.shape[0], 0, self.cfg.d_model), enc_lens
        valid = torch.arange(num_frames, device=x.device)[None, :] < enc_lens[:, None]
        mask = chunk_attention_mask(num_frames, chunk_size, left_chunks, x.device)
        mask = mask[None] & valid[:, None, :]
        rel_pos = RelativePositions.build(num_frames, 0, self.cfg.d_model, x.device)
        x = self.dropout(x)
        for layer in self.layers:
            x, _ = layer(x, mask, rel_pos, valid)
        return zero_padding(self.final_norm(x), enc_lens), enc_lens

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        left_chunks: int | None = None,
        chunk_size: int | None = None,
        max_left_chunks: int | None = None,
    ) -> EncoderState:
        """State of fresh streams caching ``left_chunks * chunk_size`` attention frames, or with
        ``left_chunks < 0`` every earlier frame (a cache that grows with the stream).

        Args:
            batch_size: B.
            device, dtype: of the caches (default: those of the encoder's parameters, so a
                float64 or bfloat16 encoder, or one on a GPU, streams with the default state).
            left_chunks, chunk_size: the chunking (default: the config's).
            max_left_chunks: with ``left_chunks < 0``, the most chunks the growing cache keeps
                (past them it slides, see the module doc); None: no bound. Ignored with a
                bounded ``left_chunks``.

        Raises:
            ValueError: when the chunking is not streamable (no chunks, or a non-causal
                convolution), or ``max_left_chunks < 1``.
        """
        chunk_size = self.cfg.chunk_size if chunk_size is None else chunk_size
        left_chunks = self.cfg.left_chunks if left_chunks is None else left_chunks
        problem = self.streaming_problem(self.cfg, chunk_size, left_chunks)
        if problem is not None:
            raise ValueError(problem)
        if max_left_chunks is not None and max_left_chunks < 1:
            raise ValueError(f"max_left_chunks must be >= 1 (or None: no bound), got "
                             f"{max_left_chunks}")
        weight = next(self.parameters())
        device = weight.device if device is None else torch.device(device)
        dtype = weight.dtype if dtype is None else dtype
        cache_limit = left_chunks * chunk_size if left_chunks >= 0 else None
        growth_limit = None
        if cache_limit is None and max_left_chunks is not None:
            growth_limit = max_left_chunks * chunk_size
        cache_size = cache_limit if cache_limit is not None else 0
        zeros = torch.zeros(batch_size, dtype=torch.long, device=device)
        return EncoderState(
            subsampling=self.subsampling.init_state(batch_size, device, dtype),
            layers=tuple(
                layer.init_state(batch_size, cache_size, device, dtype) for layer in self.layers
            ),
            attn_cache_len=zeros,
            processed_frames=zeros.clone(),
            cache_limit=cache_limit,
            growth_limit=growth_limit,
            chunk_size=chunk_size,
        )

    def frames_needed(self, state: EncoderState, chunk_size: int | None = None) -> Tensor:
        """(B,) new feature frames each stream needs for its next full chunk.

        Args:
            state: the streams' state.
            chunk_size: their chunk size; default: the state's (the one of :meth:`init_state`),
                else, for a state made without one, the config's.

        Raises:
            ValueError: for a ``chunk_size`` other than the state's (its cache was sized for
                that chunking: other chunks would stream another mask than the one asked for).
        """
        if chunk_size is None:
            chunk_size = self.cfg.chunk_size if state.chunk_size is None else state.chunk_size
        elif state.chunk_size is not None and chunk_size != state.chunk_size:
            raise ValueError(
                f"frames_needed: chunk_size={chunk_size}, but the state streams chunks of "
                f"{state.chunk_size} frames (init_state's chunk_size); pass that or none")
        return frames_needed(chunk_size) - state.subsampling.cache_len

    def forward_chunk(
        self, feats: Tensor, feat_lens: Tensor, state: EncoderState
    ) -> tuple[Tensor, Tensor, EncoderState]:
        """Continues B streams with their next feature frames.

        Args:
            feats: (B, T, F) new frames per stream; what lies beyond ``feat_lens`` reaches no
                output frame.
            feat_lens: (B,) new frames per stream (may differ, may be 0).
            state: state from :meth:`init_state` or the previous call.

        Returns:
            (B, T', D) new encoder frames (zero beyond the counts), (B,) counts, new state.

        Raises:
            ValueError: when ``feats`` is not (B, T, F) or ``feat_lens`` not (B,) counts
                within [0, T].
        """
        feats = self._features(feats, feat_lens)
        x, num_new, sub_state = self.subsampling.forward_chunk(
            feats, feat_lens, state.subsampling, check=False)  # checked above
        x = zero_padding(x, num_new)  # the padding's frames, as in forward
        num_queries = x.shape[1]
        layer_states = state.layers
        if state.cache_limit is None:
            # Room for every valid frame after this call (the layers roll their caches within
            # it), and no more: padding from streams stacked with older ones is dropped. A
            # growth limit caps it: the oldest frames then roll out as from a bounded cache.
            cache_size = int((state.attn_cache_len + num_new).max()) if num_new.numel() else 0
            if state.growth_limit is not None:
                cache_size = min(cache_size, state.growth_limit)
            layer_states = tuple(_resize_cache(s, cache_size) for s in layer_states)
        else:
            cache_size = state.cache_limit
        if num_queries == 0:
            empty = x.new_zeros(x.shape[0], 0, self.cfg.d_model)
            return empty, num_new, replace(state, subsampling=sub_state, layers=layer_states)
        valid = torch.arange(num_queries, device=x.device)[None, :] < num_new[:, None]
        mask = streaming_attention_mask(state.attn_cache_len, cache_size, num_new, num_queries)
        rel_pos = RelativePositions.build(num_queries, cache_size, self.cfg.d_model, x.device)
        new_layers = []
        for layer, layer_state in zip(self.layers, layer_states):
            x, layer_state = layer(x, mask, rel_pos, valid, layer_state, num_new)
            new_layers.append(layer_state)
        x = zero_padding(self.final_norm(x), num_new)
        new_state = EncoderState(
            subsampling=sub_state,
            layers=tuple(new_layers),
            attn_cache_len=(state.attn_cache_len + num_new).clamp(max=cache_size),
            processed_frames=state.processed_frames + num_new,
            cache_limit=state.cache_limit,
            growth_limit=state.growth_limit,
            chunk_size=state.chunk_size,
        )
        return x, num_new, new_state

    def unstack_state(self, state: EncoderState) -> list[EncoderState]:
        """Splits a batched state into one state per stream that holds only its own memory.

        The streams' tensors are copies (a view would keep the whole batch's caches alive while
        the stream waits for audio), and with unlimited left context each stream's key/value
        caches keep only its valid frames, not the padding up to the batch's oldest stream:
        the batch's counts are read once (one device sync per call, not one per stream) and
        each stream's frames are sliced before its one copy.

        Args:
            state: state of B streams (from :meth:`forward_chunk`).

        Returns:
            B states of one stream each.
        """
        # one read of the counts for the whole batch (a device sync), and each stream's valid
        # frames sliced before the one copy
        sizes = None if state.cache_limit is not None else state.attn_cache_len.tolist()
        return unstack_states(state, copy=True, ragged_sizes=sizes)


def _resize_cache(state: LayerState, size: int) -> LayerState:
    """``state`` with its (B, H, C, Dh) right-aligned key/value caches made (B, H, size, Dh):
    the first frames cut, or zeros prepended (the caller keeps every valid frame)."""
    grow = (0, 0, size - state.key.shape[2], 0)  # a negative pad cuts
    return replace(state, key=nn.functional.pad(state.key, grow),
                   value=nn.functional.pad(state.value, grow))


def _draw(num_choices: int) -> int:
    """Uniform index from torch's global generator (keeps seeded runs reproducible)."""
    return int(torch.randint(num_choices, ()))
