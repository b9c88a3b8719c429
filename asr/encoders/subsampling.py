"""Conv2d subsampling by 4 (two 3x3 stride-2 convolutions + a linear projection), full and chunked.

The front end of the Conformer (Gulati et al., 2020, "Conformer: Convolution-augmented Transformer
for Speech Recognition") and of most attention encoders since Dong et al. (2018,
"Speech-Transformer").

Output frame ``j`` reads input frames ``4j .. 4j + 6`` (a receptive field of 7 frames, stride 4), so
``T`` input frames give ``((T - 1) // 2 - 1) // 2`` output frames (:func:`subsampled_length`).
For streaming, the input frames that a later output still needs (at most
``MAX_CACHED_FRAMES = 6``) are kept in :class:`SubsamplingState`; chunked subsampling then equals
full subsampling exactly, whatever the number of frames fed per call.

Shape legend: B batch, T input frames, T' output frames, F feature bins, D model dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from asr.state import state_field

__all__ = [
    "MAX_CACHED_FRAMES",
    "RECEPTIVE_FIELD",
    "SUBSAMPLING_FACTOR",
    "Conv2dSubsampling",
    "SubsamplingState",
    "check_features",
    "frames_needed",
    "subsampled_length",
]

#: Input frames per output frame.
SUBSAMPLING_FACTOR = 4
#: Input frames one output frame reads.
RECEPTIVE_FIELD = 7
#: Most input frames ever carried from one chunk to the next (``RECEPTIVE_FIELD - 1``).
MAX_CACHED_FRAMES = RECEPTIVE_FIELD - 1


def subsampled_length(num_frames: Tensor | int) -> Tensor | int:
    """Output frames for ``num_frames`` input frames: ``((T - 1) // 2 - 1) // 2``, at least 0.

    The data pipeline uses exactly this formula to drop utterances with more tokens than encoder
    frames. Works on ints and on integer tensors.
    """
    out = ((num_frames - 1) // 2 - 1) // 2
    if isinstance(out, Tensor):
        return out.clamp(min=0)
    return max(out, 0)


def frames_needed(num_outputs: int) -> int:
    """Input frames needed to produce ``num_outputs`` output frames from the stream start."""
    if num_outputs <= 0:
        return 0
    return SUBSAMPLING_FACTOR * (num_outputs - 1) + RECEPTIVE_FIELD


@dataclass(frozen=True)
class SubsamplingState:
    """Input frames carried over to the next chunk.

    Attributes:
        cache: (B, MAX_CACHED_FRAMES, F) pending input frames, right-aligned: the valid ones are
            the last ``cache_len`` rows, the others are zero.
        cache_len: (B,) number of valid frames in ``cache`` (0 at the stream start).
    """

    cache: Tensor = state_field(batch_dim=0)
    cache_len: Tensor = state_field(batch_dim=0)


def check_features(feats: Tensor, feat_lens: Tensor, input_dim: int, owner: str) -> None:
    """Checks that ``feats`` is (B, T, ``input_dim``) and ``feat_lens`` (B,) integer counts
    within [0, T].

    The range check is skipped while tracing (the ONNX export): a trace would freeze its
    outcome into the graph.

    Raises:
        ValueError: naming ``feats`` or ``feat_lens`` and ``owner``, the module checking.
    """
    if feats.dim() != 3 or feats.shape[2] != input_dim:
        raise ValueError(
            f"{owner}: feats shape {tuple(feats.shape)}, expected (B, T, {input_dim}) "
            f"({input_dim} feature bins)"
        )
    integer = not (feat_lens.is_floating_point() or feat_lens.is_complex()
                   or feat_lens.dtype == torch.bool)
    if tuple(feat_lens.shape) != (feats.shape[0],) or not integer:
        raise ValueError(
            f"{owner}: feat_lens of shape {tuple(feat_lens.shape)} and dtype {feat_lens.dtype}, "
            f"expected ({feats.shape[0]},) integers, one count per row of feats"
        )
    if torch.jit.is_tracing():
        return
    if bool(((feat_lens < 0) | (feat_lens > feats.shape[1])).any()):
        raise ValueError(
            f"{owner}: feat_lens {feat_lens.tolist()}, expected counts within [0, "
            f"{feats.shape[1]}] (the frames of feats)"
        )


def _shift_rows(frames: Tensor, offsets: Tensor, length: int) -> Tensor:
    """Returns ``frames[b, offsets[b] : offsets[b] + length]`` for every row (indices clamped).

    Args:
        frames: (B, T, F).
        offsets: (B,) int64 start per row.
        length: number of frames to take.
    """
    positions = torch.arange(length, device=frames.device)[None, :] + offsets[:, None]
    positions = positions.clamp(min=0, max=frames.shape[1] - 1)
    index = positions[:, :, None].expand(-1, -1, frames.shape[2])
    return frames.gather(1, index)


class Conv2dSubsampling(nn.Module):
    """Two 3x3 stride-2 Conv2d + ReLU layers over (time, frequency), then Linear to ``output_dim``.

    Args:
        input_dim: feature bins F (at least 7).
        output_dim: model dims D.
        channels: convolution channels.
    """

    def __init__(self, input_dim: int, output_dim: int, channels: int) -> None:
        super().__init__()
        if input_dim < RECEPTIVE_FIELD:
            raise ValueError(
                f"Conv2dSubsampling: input_dim={input_dim} feature bins (the features' "
                f"num_mel_bins), expected >= {RECEPTIVE_FIELD}"
            )
        self.input_dim = input_dim
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2),
            nn.ReLU(),
        )
        freq_out = ((input_dim - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * freq_out, output_dim)

    def forward(
        self, feats: Tensor, feat_lens: Tensor, check: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Subsamples a whole (padded) batch.

        Args:
            feats: (B, T, F) features, any padding beyond ``feat_lens``.
            feat_lens: (B,) valid input frames.
            check: check them (:func:`check_features`); False for a caller that already did,
                as the encoder does, sparing the range check's device sync.

        Returns:
            (B, T', D) output (rows beyond the lengths are not meaningful) and (B,) lengths T'.
        """
        if check:
            check_features(feats, feat_lens, self.input_dim, "Conv2dSubsampling")
        out_frames = subsampled_length(feats.shape[1])
        # Always RECEPTIVE_FIELD zero frames more, so that the convolutions get a full window for
        # any T (0 included) without a branch on the shape, which a trace (the ONNX export)
        # would freeze at its example's length. The T' frames kept read real input frames only,
        # so they are those of the unpadded input (up to the last bit: some CPUs' convolution
        # kernels round by the input's length); the 1 or 2 frames after them, which read the
        # zeros, are dropped before the projection (whose matrix product could round
        # differently with more rows).
        feats = nn.functional.pad(feats, (0, 0, 0, RECEPTIVE_FIELD))
        return self.windows(feats, out_frames), subsampled_length(feat_lens)

    def windows(self, feats: Tensor, num_outputs: int | Tensor) -> Tensor:
        """The first ``num_outputs`` output frames of ``feats``, whose windows must all lie in
        it (no padding added: the ONNX streaming graph, fed ``frames_needed(c)`` frames a chunk,
        calls this directly).

        Args:
            feats: (B, T, F) features, T >= ``frames_needed(num_outputs)``.
            num_outputs: T' output frames to keep.

        Returns:
            (B, T', D).
        """
        x = self.conv(feats.unsqueeze(1))[:, :, :num_outputs]  # (B, C, T', F')
        batch, channels, time, freq = x.shape
        return self.out(x.transpose(1, 2).reshape(batch, time, channels * freq))

    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> SubsamplingState:
        """State of ``batch_size`` fresh streams (nothing cached)."""
        return SubsamplingState(
            cache=torch.zeros(
                batch_size, MAX_CACHED_FRAMES, self.input_dim, device=device, dtype=dtype
            ),
            cache_len=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def forward_chunk(
        self, feats: Tensor, feat_lens: Tensor, state: SubsamplingState, check: bool = True
    ) -> tuple[Tensor, Tensor, SubsamplingState]:
        """Subsamples the next frames of each stream, exactly as the full forward would.

        Args:
            feats: (B, T, F) new frames per stream, valid up to ``feat_lens``.
            feat_lens: (B,) new valid frames (may differ per stream, may be 0).
            state: what earlier calls left pending.
            check: as in :meth:`forward`.

        Returns:
            (B, T', D) new output frames, (B,) their counts, and the updated state.
        """
        if check:
            check_features(feats, feat_lens, self.input_dim, "Conv2dSubsampling")
        feat_lens = feat_lens.to(torch.long)
        combined = torch.cat([state.cache, feats.to(state.cache.dtype)], dim=1)
        total = combined.shape[1]
        # Left-align each stream's pending + new frames so output frame j reads inputs 4j..4j+6.
        combined = _shift_rows(combined, MAX_CACHED_FRAMES - state.cache_len, total)
        valid = state.cache_len + feat_lens
        # within [0, total] by construction: the new frames were checked above (or by the caller)
        out, out_lens = self.forward(combined, valid, check=False)
        consumed = SUBSAMPLING_FACTOR * out_lens
        new_len = valid - consumed  # the frames [consumed, valid) are still needed
        new_cache = _shift_rows(combined, valid - MAX_CACHED_FRAMES, MAX_CACHED_FRAMES)
        slots = torch.arange(MAX_CACHED_FRAMES, device=feats.device)[None, :]
        keep = slots >= (MAX_CACHED_FRAMES - new_len)[:, None]
        new_cache = new_cache.masked_fill(~keep[:, :, None], 0.0)
        out = out[:, : int(out_lens.max()) if out_lens.numel() else 0]
        return out, out_lens, SubsamplingState(cache=new_cache, cache_len=new_len)
