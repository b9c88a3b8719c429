"""Online (streaming) fbank: the frames of :func:`asr.features.fbank.compute_fbank` on the
whole signal, for ANY way of cutting the waveform into pieces: the same samples in every frame,
the same maths, equal to float32 rounding (a piece's frames are computed as one batch, and
float32 sums over batches of other sizes can round differently: up to ~5e-7 on log-mel values,
so two ways of cutting one signal agree to that, not bit for bit).

Frame geometry with ``snip_edges=False`` (Kaldi's centred frames, what training uses): with hop
``H`` and window ``W`` samples, a signal of ``N`` samples has ``T = (N + H // 2) // H`` frames and
frame ``t`` reads samples ``[t * H - P, t * H - P + W)`` with ``P = (W - H) // 2`` (120 for 25 ms /
10 ms at 16 kHz). Samples before 0 are the first ``P`` samples mirrored (``x[-1 - k] = x[k]``);
samples at or after ``N`` are the last ones mirrored (``x[N + k] = x[N - 1 - k]``), exactly as
lhotse's ``_get_strided_batch`` pads (icefall / sherpa's kaldi-native-fbank instead start with the
snipped-edge convention; we must match the training features, so we follow lhotse).

Consequences for streaming:

* frame ``t`` is final as soon as ``t * H - P + W`` samples have arrived: it does not touch the
  right edge, whose position is unknown until the input ends;
* the left edge needs the first ``P`` samples, known once frame 0 is computable;
* at :meth:`OnlineFbank.input_finished` the right edge is known: the remaining frames up to ``T``
  are computed with the mirrored right edge. Inputs shorter than one window are zero-padded to
  one window first, exactly as :func:`compute_fbank` does.

The class keeps an explicit remainder: the samples from the first sample of the next frame
(never more than ``W + piece`` samples). The per-frame maths (DC removal, pre-emphasis, window,
power spectrum, mel filters, log) is lhotse's own ``Wav2LogFilterBank``, applied to frames we
cut ourselves, so the numbers are those of the offline extractor.

Shape legend: N samples, T frames, F mel bins.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from asr.audio import as_waveform
from asr.features.fbank import FbankConfig, make_lhotse_fbank, mono_waveform, num_frames

__all__ = ["OnlineFbank"]


class OnlineFbank:
    """Incremental log-mel features of one stream.

    Args:
        cfg: feature options; ``snip_edges`` must be False and ``dither`` 0 (deterministic
            features are the only ones that can equal the offline ones).
        extractor: a ``lhotse.Fbank`` for ``cfg`` to share between streams (built if None).

    Example:
        >>> fbank = OnlineFbank(FbankConfig())
        >>> frames = [fbank.accept_waveform(piece) for piece in pieces]
        >>> frames.append(fbank.input_finished())
        >>> torch.cat(frames)  # == compute_fbank(torch.cat(pieces), 16000)
    """

    def __init__(self, cfg: FbankConfig | None = None, extractor=None) -> None:
        cfg = cfg or FbankConfig()
        if cfg.snip_edges:
            raise ValueError("OnlineFbank supports snip_edges=False only (the training setting)")
        if cfg.dither != 0:
            raise ValueError(
                f"OnlineFbank needs dither=0 to match offline features, got {cfg.dither}"
            )
        self.cfg = cfg
        self._fbank = (extractor or make_lhotse_fbank(cfg)).extractor
        self._hop = cfg.hop_samples
        self._window = cfg.window_samples
        self._left_pad = (self._window - self._hop) // 2
        self._buffer = torch.zeros(0)  # samples from absolute index ``_buffer_start`` on
        self._buffer_start = 0
        self._head = torch.zeros(0)  # first ``_left_pad`` samples, for the mirrored left edge
        self._num_samples = 0
        self._num_frames = 0
        self._finished = False

    @property
    def num_samples(self) -> int:
        """Samples received so far."""
        return self._num_samples

    @property
    def num_frames(self) -> int:
        """Frames emitted so far."""
        return self._num_frames

    @property
    def finished(self) -> bool:
        return self._finished

    def accept_waveform(self, samples: np.ndarray | Tensor) -> Tensor:
        """Appends (N,) or (1, N) samples at ``cfg.sample_rate`` (float in [-1, 1], or integer
        PCM scaled as :func:`asr.audio.as_waveform` does, as :func:`compute_fbank` takes them);
        returns the (T, F) new final frames.

        Raises:
            ValueError: for samples of another shape (several channels), as
                :func:`compute_fbank` refuses them.
            asr.audio.AudioError: for samples that are not audio or not finite.
        """
        if self._finished:
            raise RuntimeError("OnlineFbank.accept_waveform after input_finished()")
        mono = mono_waveform(samples, "OnlineFbank.accept_waveform")
        wave = torch.tensor(as_waveform(mono, "OnlineFbank input", allow_empty=True))
        if wave.numel() == 0:
            return self._empty()
        if self._head.numel() < self._left_pad:
            self._head = torch.cat([self._head, wave[: self._left_pad - self._head.numel()]])
        self._buffer = torch.cat([self._buffer, wave])
        self._num_samples += wave.numel()
        # frame t is final once t * H - P + W samples are in.
        ready = (self._num_samples + self._left_pad - self._window) // self._hop + 1
        return self._emit(max(ready, 0), self._buffer)

    def input_finished(self) -> Tensor:
        """Ends the stream: returns the (T, F) last frames, computed with the mirrored right
        edge."""
        if self._finished:
            return self._empty()
        self._finished = True
        total = num_frames(self._num_samples, self.cfg)
        if total <= self._num_frames:
            return self._empty()
        signal, length = self._buffer, self._num_samples
        if length < self._window:
            # compute_fbank zero-pads inputs shorter than one window (no frame was emitted yet,
            # so the buffer holds the whole signal).
            signal = torch.nn.functional.pad(signal, (0, self._window - length))
            self._head = signal[: self._left_pad]
            length = self._window
        last_end = (total - 1) * self._hop - self._left_pad + self._window
        right = last_end - length
        if right > 0:
            tail = signal[signal.numel() - right:].flip(0)
            signal = torch.cat([signal, tail])
        return self._emit(total, signal)

    def _emit(self, upto: int, signal: Tensor) -> Tensor:
        """Frames ``[num_frames, upto)`` from ``signal`` (samples from ``_buffer_start`` on)."""
        first = self._num_frames
        if upto <= first:
            return self._empty()
        start = first * self._hop - self._left_pad  # absolute index of the first needed sample
        if start < 0:
            padded = torch.cat([self._head[: -start].flip(0), signal])
            offset = 0
        else:
            padded, offset = signal, start - self._buffer_start
        count = upto - first
        frames = padded[offset: offset + (count - 1) * self._hop + self._window]
        frames = frames.unfold(0, self._window, self._hop)[None]  # (1, T, W)
        with torch.no_grad():
            x_strided, log_energy = self._fbank.wav2win._forward_strided(frames)
            feats = self._fbank._forward_strided(x_strided, log_energy)[0]
        self._num_frames = upto
        keep_from = max(upto * self._hop - self._left_pad, 0)
        self._buffer = self._buffer[keep_from - self._buffer_start:]
        self._buffer_start = keep_from
        return feats.to(torch.float32)

    def _empty(self) -> Tensor:
        return torch.zeros(0, self.cfg.num_mel_bins)
