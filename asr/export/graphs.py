"""The PyTorch modules that become the ONNX graphs sherpa-onnx runs.

Each wrapper takes the layers of a trained :class:`asr.model.ASRModel` (no copies of weights) and
exposes exactly the inputs and outputs, in the order, dtypes and shapes the sherpa-onnx loaders
expect (docs/ONNX.md lists them; they were read from sherpa-onnx's C++ sources):

* :class:`OfflineEncoder`: ``x (N, T, F) float, x_lens (N,) int64 -> encoder_out (N, T', J),
  encoder_out_lens (N,) int64``, the joiner's encoder projection applied inside (sherpa's joiner
  receives projected frames). Global CMVN, when the encoder has it, is inside as well: sherpa
  feeds raw log-mel frames. Padding frames (sherpa pads with ``log(1e-10)``) never reach a valid
  output frame (the encoder masks by length).
* :class:`Decoder`: ``y (N, context_size) int64 -> decoder_out (N, J)``: the stateless predictor
  on the last ``context_size`` tokens plus the joiner's predictor projection. sherpa starts a
  stream with the context ``[-1, ..., -1, 0]``; the ids below 0 are read as blank, which is the
  context our predictor starts from (so the first output equals ours exactly).
* :class:`Joiner`: ``encoder_out (N, J), decoder_out (N, J) -> logit (N, V)``, raw logits.
* :class:`CtcModel`: ``x, x_lens -> log_probs (N, T', V), log_probs_len (N,) int64``.
* :class:`StreamingEncoder`: one chunk of the causal chunked encoder in sherpa-onnx's
  ``ebranchformer`` state layout: ``x (N, 4c + 3, F)``, then per layer ``cached_key``,
  ``cached_value`` (N, H, L, Dh), ``cached_conv`` (N, D, K - 1), ``cached_conv_fusion``
  (N, 2D, 1, a pass-through slot our blocks do not need), and ``processed_lens`` (N,) int64;
  it returns ``encoder_out (N, c, J)`` and the same states updated, in the same order.

Why the streaming encoder needs no subsampling cache: sherpa reads ``T = 4c + 3`` feature frames
per call and then moves on by ``decode_chunk_len = 4c`` frames, so consecutive windows overlap by
the 3 frames that our Conv2d subsampling (receptive field 7, stride 4) would otherwise carry in its
state. Each call therefore subsamples its window alone and gets exactly the ``c`` encoder frames
our chunk-by-chunk streaming (:meth:`asr.encoders.chunked.ChunkedEncoder.forward_chunk`) produces.
``processed_lens`` (encoder frames already cached) is owned by the graph: sherpa zero-fills it,
stacks it with the other states and never reads it; the graph masks the cache slots not yet
filled with it and returns it advanced by ``c``.

Shape legend: N batch, T feature frames, F feature bins, T' encoder frames, D model dims,
J joiner dims, V vocabulary incl. blank, H heads, Dh head dims, L cached frames, K convolution
kernel, c chunk size in encoder frames.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from asr.encoders.attention import RelativePositions, streaming_attention_mask
from asr.encoders.chunked import ChunkedEncoder
from asr.encoders.layers import LayerState
from asr.encoders.subsampling import RECEPTIVE_FIELD, SUBSAMPLING_FACTOR
from asr.heads.ctc import CTCHead
from asr.heads.predictor import StatelessPredictor
from asr.heads.transducer import TransducerHead

__all__ = [
    "CtcModel",
    "Decoder",
    "Joiner",
    "OfflineEncoder",
    "STATES_PER_LAYER",
    "StreamingEncoder",
    "chunk_frames",
]

#: Tensors per layer in the ``ebranchformer`` layout (key, value, conv, conv_fusion).
STATES_PER_LAYER = 4


def chunk_frames(chunk_size: int) -> tuple[int, int]:
    """``(T, decode_chunk_len)``: feature frames read per call and the shift between calls."""
    shift = SUBSAMPLING_FACTOR * chunk_size
    return shift + RECEPTIVE_FIELD - SUBSAMPLING_FACTOR, shift


class OfflineEncoder(nn.Module):
    """Whole-utterance encoder with an optional output projection (the joiner's, for
    transducers)."""

    def __init__(self, encoder: ChunkedEncoder, projection: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.projection = projection

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """(N, T, F) float, (N,) int64 -> (N, T', J) float, (N,) int64."""
        enc, enc_lens = self.encoder(x, x_lens)
        if self.projection is not None:
            enc = self.projection(enc)
        return enc, enc_lens.to(torch.int64)


class Decoder(nn.Module):
    """Stateless predictor on a window of ``context_size`` tokens, then the joiner's predictor
    projection."""

    def __init__(self, head: TransducerHead) -> None:
        super().__init__()
        predictor = head.predictor
        if not isinstance(predictor, StatelessPredictor):
            raise TypeError(f"{type(predictor).__name__}: only the stateless predictor exports")
        self.predictor = predictor
        self.projection = head.joiner.predictor_proj
        self.blank_id = head.blank_id

    @property
    def context_size(self) -> int:
        return self.predictor.context_size

    def forward(self, y: Tensor) -> Tensor:
        """(N, context_size) int64, oldest first; ids < 0 read as blank -> (N, J)."""
        y = torch.where(y < 0, torch.full_like(y, self.blank_id), y)
        emb = self.predictor.embedding(y)  # (N, C, P)
        if self.predictor.conv is not None:
            emb = self.predictor.conv(emb.transpose(1, 2))[:, :, 0]  # (N, P)
        else:
            emb = emb[:, 0]
        return self.projection(torch.relu(emb))


class Joiner(nn.Module):
    """Projected encoder frame + projected predictor output -> token logits."""

    def __init__(self, head: TransducerHead) -> None:
        super().__init__()
        self.joiner = head.joiner

    def forward(self, encoder_out: Tensor, decoder_out: Tensor) -> Tensor:
        """(N, J), (N, J) -> (N, V) raw logits."""
        return self.joiner.join(encoder_out, decoder_out)


class CtcModel(nn.Module):
    """Encoder + CTC head: features to log-probabilities."""

    def __init__(self, encoder: ChunkedEncoder, head: CTCHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """(N, T, F), (N,) int64 -> (N, T', V) log-probs, (N,) int64."""
        enc, enc_lens = self.encoder(x, x_lens)
        return torch.log_softmax(self.head.logits(enc), dim=-1), enc_lens.to(torch.int64)


class StreamingEncoder(nn.Module):
    """One streaming chunk in the ``ebranchformer`` state layout (see the module docstring).

    Args:
        encoder: a causal chunked encoder.
        projection: the joiner's encoder projection.
        chunk_size: c, encoder frames per chunk.
        left_chunks: chunks of left context (the cache holds ``left_chunks * c`` frames, > 0;
            unlimited left context, ``< 0``, has no fixed-size cache and is refused).
    """

    def __init__(
        self, encoder: ChunkedEncoder, projection: nn.Module, chunk_size: int, left_chunks: int
    ) -> None:
        super().__init__()
        problem = encoder.streaming_problem(encoder.cfg, chunk_size, left_chunks)
        if problem is not None:
            raise ValueError(problem)
        if left_chunks < 0:
            raise ValueError(
                "the sherpa-onnx streaming layout has fixed-size caches, and unlimited left "
                f"context (left_chunks={left_chunks}) keeps a cache that grows with the stream; "
                "export with a bounded one (--left-chunks N, N > 0)")
        if left_chunks * chunk_size <= 0:
            raise ValueError("the sherpa-onnx streaming layout needs a left context "
                             f"(left_chunks={left_chunks}); export with one "
                             "(--left-chunks N, N > 0)")
        self.encoder = encoder
        self.projection = projection
        self.chunk_size = chunk_size
        self.cache_size = left_chunks * chunk_size
        first = encoder.layers[0] if len(encoder.layers) else None
        conv = getattr(first, "conv", None)
        #: Kernel of the depthwise convolution (its cache has K - 1 frames); 2 for blocks without
        #: one, whose slot is a 1-frame pass-through.
        self.conv_kernel = conv.kernel_size if conv is not None else 2
        self.has_conv = conv is not None
        if self.has_conv and self.conv_kernel < 2:
            raise ValueError("a depthwise convolution of kernel 1 has no cache; the sherpa-onnx "
                             "layout needs conv_kernel_size >= 3")

    @property
    def num_layers(self) -> int:
        return len(self.encoder.layers)

    @property
    def d_model(self) -> int:
        return self.encoder.cfg.d_model

    @property
    def num_heads(self) -> int:
        return self.encoder.cfg.num_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def state_shapes(self, batch_size: int) -> list[tuple[int, ...]]:
        """Shapes of the float states of one call, in input order (``processed_lens`` last)."""
        kv = (batch_size, self.num_heads, self.cache_size, self.head_dim)
        conv = (batch_size, self.d_model, self.conv_kernel - 1)
        fusion = (batch_size, 2 * self.d_model, 1)
        return [kv, kv, conv, fusion] * self.num_layers

    def init_states(self, batch_size: int) -> list[Tensor]:
        """Zero states of fresh streams (what sherpa feeds first), ``processed_lens`` last."""
        states = [torch.zeros(shape) for shape in self.state_shapes(batch_size)]
        return states + [torch.zeros(batch_size, dtype=torch.int64)]

    def forward(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        """(N, 4c + 3, F) frames and the states -> (N, c, J) frames and the new states."""
        processed_lens = states[-1]
        encoder = self.encoder
        if encoder.input_norm is not None:
            x = encoder.input_norm(x)
        hidden = encoder.subsampling.windows(x, self.chunk_size)  # (N, c, D)
        batch = hidden.shape[0]
        num_new = torch.full_like(processed_lens, self.chunk_size)
        cache_len = processed_lens.clamp(max=self.cache_size)
        mask = streaming_attention_mask(cache_len, self.cache_size, num_new, self.chunk_size)
        rel_pos = RelativePositions.build(self.chunk_size, self.cache_size, self.d_model, x.device)
        valid = torch.ones(batch, self.chunk_size, dtype=torch.bool, device=x.device)
        new_states: list[Tensor] = []
        for i, layer in enumerate(encoder.layers):
            key, value, conv, fusion = states[STATES_PER_LAYER * i: STATES_PER_LAYER * (i + 1)]
            layer_state = LayerState(key=key, value=value, conv=conv if self.has_conv else None)
            hidden, layer_state = layer(hidden, mask, rel_pos, valid, layer_state, num_new)
            new_conv = layer_state.conv if self.has_conv else conv
            new_states += [layer_state.key, layer_state.value, new_conv, fusion]
        hidden = self.projection(encoder.final_norm(hidden))
        return (hidden, *new_states, processed_lens + self.chunk_size)


# ----------------------------------------------------------------------------- NeMo path (TDT)
#
# sherpa-onnx runs TDT models only through its NeMo transducer implementation, whose contract
# differs from the icefall one above: features and encoder frames are channel-first, the blank is
# the LAST id, the decoder takes int32 ids and two float state tensors shaped like an LSTM's
# (layers, N, hidden) which it zero-fills and carries, and the joiner's duration logits are read
# by argmax, the index itself being the number of frames to skip. Our blank is 0, so ids are
# rotated by one (ours = nemo + 1, nemo's last id = our blank), and our stateless predictor's
# context (its last ``context_size - 1`` tokens, our ids) travels as floats in the first state
# tensor; zeros are our start context (blank). The second state is a pass-through of the same
# shape: sherpa makes both ``(pred_rnn_layers, N, pred_hidden)`` from the encoder's metadata.


class NemoEncoder(nn.Module):
    """``audio_signal (N, F, T), length (N,) int64 -> outputs (N, J, T'), encoded_lengths``."""

    def __init__(self, encoder: ChunkedEncoder, projection: nn.Module) -> None:
        super().__init__()
        self.offline = OfflineEncoder(encoder, projection)

    def forward(self, audio_signal: Tensor, length: Tensor) -> tuple[Tensor, Tensor]:
        enc, enc_lens = self.offline(audio_signal.transpose(1, 2), length)
        return enc.transpose(1, 2), enc_lens


def nemo_state_width(context_size: int) -> int:
    """``pred_hidden`` of the NeMo-path decoder: the context ids carried (at least 1)."""
    return max(context_size - 1, 1)


class NemoDecoder(nn.Module):
    """Stateless predictor behind the NeMo decoder contract (see above).

    ``targets (N, 1) int32, target_length (N,) int32, states_0 (1, N, S), states_1 (1, N, S)
    -> decoder_out (N, J, 1), target_length, states_0, states_1`` with ``S`` =
    :func:`nemo_state_width` (``pred_hidden``; ``states_1`` is passed through).
    """

    def __init__(self, head: TransducerHead) -> None:
        super().__init__()
        self.decoder = Decoder(head)
        self.vocab_size = head.vocab_size

    def forward(self, targets: Tensor, target_length: Tensor, states_0: Tensor,
                states_1: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        nemo = targets.to(torch.int64)
        ours = torch.where(nemo == self.vocab_size - 1, torch.zeros_like(nemo), nemo + 1)
        keep = self.decoder.context_size - 1
        if keep > 0:
            history = torch.cat([states_0[0].round().to(torch.int64), ours], dim=1)
            new_states_0 = history[:, 1:].to(states_0.dtype)[None]
        else:
            history, new_states_0 = ours, states_0 * 1.0
        out = self.decoder(history)  # (N, J)
        return out[:, :, None], target_length * 1, new_states_0, states_1 * 1.0


class NemoJoiner(nn.Module):
    """``encoder_out (N, J, 1), decoder_out (N, J, 1) -> logits (N, V + D)``: token logits with
    blank moved last, then one logit per skip 0..D-1 (``-1e4`` for skips the model lacks)."""

    #: Logit of a skip the model does not predict.
    MISSING = -1e4

    def __init__(self, head: TransducerHead) -> None:
        super().__init__()
        self.joiner = head.joiner
        self.vocab_size = head.vocab_size
        durations = list(head.durations)
        index = torch.full((max(durations) + 1,), -1, dtype=torch.int64)
        for k, d in enumerate(durations):
            index[d] = k
        self.register_buffer("duration_index", index.clamp(min=0), persistent=False)
        self.register_buffer("duration_missing", index < 0, persistent=False)

    def forward(self, encoder_out: Tensor, decoder_out: Tensor) -> Tensor:
        logits = self.joiner.join(encoder_out[:, :, 0], decoder_out[:, :, 0])
        vocab = self.vocab_size
        tokens = torch.cat([logits[:, 1:vocab], logits[:, :1]], dim=1)
        durations = logits[:, vocab:].index_select(1, self.duration_index)
        durations = durations.masked_fill(self.duration_missing, self.MISSING)
        return torch.cat([tokens, durations], dim=1)
