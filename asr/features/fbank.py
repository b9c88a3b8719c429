"""Kaldi-compatible log-mel filterbank features: ONE configuration for training and streaming.

The features are the classic Kaldi ``compute-fbank-feats`` log mel energies (Davis & Mermelstein,
"Comparison of parametric representations for monosyllabic word recognition", 1980; Povey et al.,
"The Kaldi speech recognition toolkit", 2011): pre-emphasis, Povey window, power spectrum, 80
triangular mel filters, natural log. They are computed by lhotse's ``Fbank`` extractor so that
precomputed (stored) features, on-the-fly training features and :func:`compute_fbank` used by
``asr transcribe`` are produced by exactly the same code; they match
``torchaudio.compliance.kaldi.fbank`` with the same options to ~1e-4.

``snip_edges`` choice: we use ``snip_edges=False`` (Kaldi's "centre frames" mode), as lhotse and
icefall do. The signal is reflected at both edges so the frame count depends only on the number of
samples ``N`` and the hop ``H``: ``T = (N + H // 2) // H`` (see :func:`num_frames`), which is what
lhotse assumes when converting durations to frame counts. With ``snip_edges=True`` lhotse warns and
cut durations no longer agree with the stored number of frames.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from asr.audio import as_waveform, resample

if TYPE_CHECKING:  # pragma: no cover
    import lhotse

__all__ = ["MEL_FILTERS", "WINDOW_TYPES", "FbankConfig", "compute_fbank", "encoder_frame_samples",
           "encoder_frame_seconds", "filter_mel", "htk_mel", "kaldi_blackman_window",
           "make_lhotse_fbank", "mel_filter_centers", "mono_waveform", "num_frames", "slaney_mel",
           "slaney_mel_filters"]

#: Values of :attr:`FbankConfig.mel_filters`.
MEL_FILTERS = ("kaldi", "librosa")

#: Values of :attr:`FbankConfig.window_type` (the windows lhotse's Kaldi layers implement).
WINDOW_TYPES = ("povey", "hanning", "hamming", "rectangular", "blackman")


@dataclass(frozen=True)
class FbankConfig:
    """Log-mel filterbank options (Kaldi names and semantics).

    Attributes:
        sample_rate: expected audio sampling rate in Hz; other rates are resampled by
            :func:`compute_fbank`.
        num_mel_bins: number of triangular mel filters F (the feature dimension).
        frame_length_ms: analysis window length in milliseconds.
        frame_shift_ms: hop between frames in milliseconds.
        dither: standard deviation of the Gaussian noise added to samples (on the [-1, 1] float
            scale); 0 gives deterministic features (the default, as for stored features). It is
            training noise, added to on-the-fly training features only (training from stored
            features with it is refused): evaluation and recognition drop it
            (:meth:`for_recognition`).
        snip_edges: Kaldi's snip_edges; False (reflect the edges) is the only mode in which
            durations and frame counts agree, see the module docstring.
        low_freq: lowest mel filter edge in Hz.
        high_freq: highest mel filter edge in Hz; a value <= 0 is an offset from Nyquist.
            ``num_mel_bins`` filters must each hold an FFT bin of the band ``low_freq`` ..
            ``high_freq`` (Kaldi refuses more; an empty filter is a constant feature bin).
        preemph_coeff: pre-emphasis coefficient.
        window_type: Kaldi window name, one of :data:`WINDOW_TYPES`.
        remove_dc_offset: subtract each frame's mean before windowing.
        round_to_power_of_two: pad the FFT size to a power of two.
        energy_floor: Kaldi's floor of the frame *energy* term (``--energy-floor``), which these
            features do not include: it leaves the mel bins alone. As in Kaldi and torchaudio,
            mel energies are floored at float32 epsilon before the log, so digital silence gives
            ``log(2**-23) = -15.942`` in every bin, never ``-inf``.
        mel_filters: ``kaldi``: Kaldi's triangular filters on the HTK mel scale (the default,
            icefall's and sherpa-onnx's usual front end); ``librosa``: Slaney-scale filters with
            Slaney area normalisation, as librosa and kaldi-native-fbank (``is_librosa``) make
            them -- the front end sherpa-onnx imposes on NeMo-style transducers (TDT), which
            also sets ``low_freq: 0`` and ``remove_dc_offset: false`` (docs/ONNX.md).
    """

    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0
    snip_edges: bool = False
    low_freq: float = 20.0
    high_freq: float = -400.0
    preemph_coeff: float = 0.97
    window_type: str = "povey"
    remove_dc_offset: bool = True
    round_to_power_of_two: bool = True
    energy_floor: float = 1e-10
    mel_filters: str = "kaldi"

    def __post_init__(self) -> None:
        if self.mel_filters not in MEL_FILTERS:
            raise ValueError(
                f"FbankConfig.mel_filters must be one of {MEL_FILTERS}, got {self.mel_filters!r}")
        if self.sample_rate <= 0:
            raise ValueError(f"FbankConfig.sample_rate must be > 0, got {self.sample_rate}")
        if self.num_mel_bins <= 0:
            raise ValueError(f"FbankConfig.num_mel_bins must be > 0, got {self.num_mel_bins}")
        if not 0 < self.frame_shift_ms <= self.frame_length_ms:
            raise ValueError(
                "FbankConfig needs 0 < frame_shift_ms <= frame_length_ms, got "
                f"frame_shift_ms={self.frame_shift_ms}, frame_length_ms={self.frame_length_ms}"
            )
        if self.dither < 0:
            raise ValueError(f"FbankConfig.dither must be >= 0, got {self.dither}")
        if self.window_type not in WINDOW_TYPES:
            raise ValueError(
                f"FbankConfig.window_type must be one of {WINDOW_TYPES}, got {self.window_type!r}")
        nyquist = self.sample_rate / 2
        if not 0 <= self.low_freq < self.high_freq_hz <= nyquist:
            raise ValueError(
                f"FbankConfig needs 0 <= low_freq < high_freq <= Nyquist ({nyquist:g} Hz at "
                f"sample_rate {self.sample_rate}; high_freq <= 0 is an offset from Nyquist), got "
                f"low_freq={self.low_freq}, high_freq={self.high_freq}"
            )
        empty = _empty_filters(self, self.num_mel_bins)
        if empty:
            # 0: not even one filter holds an FFT bin of so narrow a band
            most = next((n for n in range(self.num_mel_bins - 1, 0, -1)
                         if not _empty_filters(self, n)), 0)
            remedy = f"use at most {most} bins or a wider band" if most else "use a wider band"
            raise ValueError(
                f"FbankConfig.num_mel_bins={self.num_mel_bins} is too many for the band "
                f"{self.low_freq:g}-{self.high_freq_hz:g} Hz at sample_rate {self.sample_rate} "
                f"({self.fft_size}-point FFT, {self.mel_filters} mel filters): {len(empty)} of "
                f"the filters hold no FFT bin (the first is filter {empty[0]}) and would give "
                f"constant features, which Kaldi refuses; {remedy}"
            )

    def for_recognition(self) -> FbankConfig:
        """These options without dither: the front end of every recognition and evaluation path
        (dev batches, ``asr decode``, the runtime, the ONNX export's check). Dither is noise
        added to the training features; Kaldi's and icefall's decoders run without it."""
        return dataclasses.replace(self, dither=0.0)

    @property
    def high_freq_hz(self) -> float:
        """The highest mel filter edge in Hz (``high_freq``, or Nyquist plus it when <= 0)."""
        nyquist = self.sample_rate / 2
        return self.high_freq if self.high_freq > 0 else nyquist + self.high_freq

    @property
    def frame_shift(self) -> float:
        """Frame shift in seconds."""
        return self.frame_shift_ms / 1000.0

    @property
    def fft_size(self) -> int:
        """FFT length in samples: the window, padded to a power of two when
        ``round_to_power_of_two``."""
        window = self.window_samples
        return 1 << (window - 1).bit_length() if self.round_to_power_of_two else window

    @property
    def hop_samples(self) -> int:
        """Frame shift in samples at ``sample_rate``."""
        return round(self.frame_shift_ms * self.sample_rate / 1000.0)

    @property
    def window_samples(self) -> int:
        """Window length in samples at ``sample_rate``."""
        return round(self.frame_length_ms * self.sample_rate / 1000.0)

    def torchaudio_kwargs(self) -> dict[str, object]:
        """Keyword arguments giving the same features with ``torchaudio.compliance.kaldi.fbank``
        (Kaldi mel filters only)."""
        if self.mel_filters != "kaldi":
            raise ValueError("torchaudio's Kaldi fbank has no librosa-style mel filters")
        return {
            "sample_frequency": float(self.sample_rate),
            "num_mel_bins": self.num_mel_bins,
            "frame_length": self.frame_length_ms,
            "frame_shift": self.frame_shift_ms,
            "dither": self.dither,
            "snip_edges": self.snip_edges,
            "low_freq": self.low_freq,
            "high_freq": self.high_freq,
            "preemphasis_coefficient": self.preemph_coeff,
            "window_type": self.window_type,
            "remove_dc_offset": self.remove_dc_offset,
            "round_to_power_of_two": self.round_to_power_of_two,
            "use_energy": False,
            "use_log_fbank": True,
            "use_power": True,
        }


def num_frames(num_samples: int, cfg: FbankConfig) -> int:
    """Number of feature frames for ``num_samples`` samples at ``cfg.sample_rate``.

    ``(N + H // 2) // H`` for ``snip_edges=False``; ``1 + (N - W) // H`` (0 if ``N < W``) for
    ``snip_edges=True``, with ``H`` the hop and ``W`` the window in samples.
    """
    hop = cfg.hop_samples
    if cfg.snip_edges:
        window = cfg.window_samples
        return 0 if num_samples < window else 1 + (num_samples - window) // hop
    return (num_samples + hop // 2) // hop


def encoder_frame_samples(cfg: FbankConfig, subsampling_factor: int) -> int:
    """Samples (at ``cfg.sample_rate``) per encoder frame: ``subsampling_factor`` feature frames
    of ``cfg.hop_samples``. The one source of an encoder frame's length; its duration is
    :func:`encoder_frame_seconds`."""
    return cfg.hop_samples * subsampling_factor


def encoder_frame_seconds(cfg: FbankConfig, subsampling_factor: int) -> float:
    """Seconds per encoder frame: :func:`encoder_frame_samples` at ``cfg.sample_rate``."""
    return encoder_frame_samples(cfg, subsampling_factor) / cfg.sample_rate


def slaney_mel_filters(cfg: FbankConfig) -> Tensor:
    """(fft_size // 2 + 1, F) librosa-style filters: triangles equally spaced on the Slaney mel
    scale (linear below 1 kHz, logarithmic above) between ``low_freq`` and ``high_freq``, each
    scaled to unit area (``2 / (right_hz - left_hz)``), evaluated at every FFT bin including
    Nyquist -- kaldi-native-fbank's ``is_librosa`` filters."""
    return _slaney_weights(cfg, cfg.num_mel_bins)


def _slaney_weights(cfg: FbankConfig, bins: int) -> Tensor:
    """(fft_size // 2 + 1, bins) :func:`slaney_mel_filters` of ``cfg`` with ``bins`` filters."""
    fft_size = cfg.fft_size
    high = cfg.high_freq_hz  # within (low_freq, Nyquist]: FbankConfig checks it
    edges = _slaney_hz(np.linspace(slaney_mel(cfg.low_freq), slaney_mel(high), bins + 2))
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    hz = np.arange(fft_size // 2 + 1)[:, None] * (cfg.sample_rate / fft_size)
    rising = (hz - left) / (center - left)
    falling = (right - hz) / (right - center)
    weights = np.where(hz <= center, rising, falling)
    weights = np.where((hz > left) & (hz < right), weights, 0.0) * (2 / (right - left))
    return torch.from_numpy(weights.astype(np.float32))


def slaney_mel(hz: Tensor | np.ndarray | float) -> Tensor | np.ndarray:
    """The Slaney mel scale of librosa's filters: ``3 hz / 200`` up to 1 kHz (mel 15), then
    ``15 + 27 ln(hz / 1000) / ln 6.4``. A tensor stays a tensor (its dtype kept), anything else
    becomes float64 numpy."""
    if isinstance(hz, Tensor):
        log_part = 15 + 27 * torch.log(hz.clamp(min=1e-9) / 1000) / math.log(6.4)
        return torch.where(hz <= 1000, hz * 3 / 200, log_part)
    hz = np.asarray(hz, dtype=np.float64)
    return np.where(hz <= 1000, hz * 3 / 200,
                    15 + 27 * np.log(np.maximum(hz, 1e-9) / 1000) / np.log(6.4))


def _slaney_hz(mel: np.ndarray) -> np.ndarray:
    """Hz of Slaney mel values (float64 numpy): the inverse of :func:`slaney_mel`."""
    return np.where(mel <= 15, mel * 200 / 3, 1000 * np.exp((mel - 15) * np.log(6.4) / 27))


def htk_mel(hz: Tensor | np.ndarray | float) -> Tensor | np.ndarray:
    """The HTK mel scale of Kaldi's filters, ``1127 ln(1 + hz / 700)``: a tensor stays a
    tensor (its dtype kept), anything else becomes float64 numpy."""
    if isinstance(hz, Tensor):
        return 1127.0 * torch.log1p(hz / 700.0)
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def filter_mel(cfg: FbankConfig, hz: Tensor) -> Tensor:
    """``hz`` on the mel scale that ``cfg``'s filters are equally spaced on: :func:`htk_mel`
    for ``mel_filters: kaldi``, :func:`slaney_mel` for ``librosa``; same shape and dtype."""
    return slaney_mel(hz) if cfg.mel_filters == "librosa" else htk_mel(hz)


def mel_filter_centers(cfg: FbankConfig) -> tuple[Tensor, float, float]:
    """Centre frequencies of ``cfg``'s triangular mel filters (Kaldi's or librosa's).

    Both banks space ``num_mel_bins + 2`` edges equally on their mel scale (:func:`filter_mel`)
    from ``low_freq`` to ``high_freq``; filter ``k`` peaks at edge ``k + 1``.

    Returns:
        centres (F,) float64 in Hz, the lowest edge's mel value and the mel spacing of the
        filters (filter ``k`` peaks at mel ``low + (k + 1) * spacing``).
    """
    band = torch.tensor([cfg.low_freq, cfg.high_freq_hz], dtype=torch.float64)
    mel_low, mel_high = filter_mel(cfg, band).tolist()
    spacing = (mel_high - mel_low) / (cfg.num_mel_bins + 1)
    mels = mel_low + spacing * torch.arange(1, cfg.num_mel_bins + 1, dtype=torch.float64)
    if cfg.mel_filters == "librosa":
        centres = torch.from_numpy(_slaney_hz(mels.numpy()))
    else:
        centres = 700.0 * torch.expm1(mels / 1127.0)
    return centres, mel_low, spacing


def _empty_filters(cfg: FbankConfig, num_bins: int) -> list[int]:
    """Indices of the filters that weigh no FFT bin when ``cfg`` has ``num_bins`` mel filters.
    Kaldi filters (its ``MelBanks``): ``num_bins + 2`` edges equally spaced on the HTK mel scale
    over the band, filter ``m`` covering the FFT bins ``k < fft_size / 2`` whose mel lies
    strictly between its outer edges ``m`` and ``m + 2``; librosa filters: the columns of
    :func:`slaney_mel_filters`."""
    if cfg.mel_filters == "librosa":
        return torch.nonzero(_slaney_weights(cfg, num_bins).amax(dim=0) <= 0).flatten().tolist()

    edges = np.linspace(htk_mel(cfg.low_freq), htk_mel(cfg.high_freq_hz), num_bins + 2)
    bins = htk_mel(np.arange(cfg.fft_size // 2) * (cfg.sample_rate / cfg.fft_size))[:, None]
    inside = (bins > edges[None, :-2]) & (bins < edges[None, 2:])
    return np.flatnonzero(~inside.any(axis=0)).tolist()


def kaldi_blackman_window(size: int, coeff: float = 0.42) -> Tensor:
    """(W,) Kaldi's Blackman window, ``coeff - 0.5 cos(a n) + (0.5 - coeff) cos(2 a n)`` with
    ``a = 2 pi / (W - 1)`` (symmetric, as torchaudio's Kaldi fbank). lhotse's divides by ``W``
    instead, which moved the features by up to ~0.15 from Kaldi's."""
    angle = 2 * np.pi / (size - 1) * np.arange(size)
    window = coeff - 0.5 * np.cos(angle) + (0.5 - coeff) * np.cos(2 * angle)
    return torch.from_numpy(window.astype(np.float32))


def make_lhotse_fbank(cfg: FbankConfig | None = None) -> lhotse.Fbank:
    """Builds the lhotse ``Fbank`` feature extractor for ``cfg`` (CPU); with
    ``mel_filters: librosa`` its filter matrix is replaced by :func:`slaney_mel_filters`
    (every feature path -- stored, on-the-fly, offline and online inference -- uses this
    extractor); a ``blackman`` window is replaced by Kaldi's (:func:`kaldi_blackman_window`)."""
    cfg = cfg or FbankConfig()
    extractor = _lhotse_fbank(cfg)
    if cfg.window_type == "blackman":
        window = extractor.extractor.wav2win._window
        with torch.no_grad():
            window.data = kaldi_blackman_window(window.numel()).to(window.device, window.dtype)
    if cfg.mel_filters == "librosa":
        filters = extractor.extractor._fb
        with torch.no_grad():
            filters.data = slaney_mel_filters(cfg).to(filters.device, filters.dtype)
    return extractor


def _lhotse_fbank(cfg: FbankConfig) -> lhotse.Fbank:
    import lhotse

    return lhotse.Fbank(
        lhotse.FbankConfig(
            sampling_rate=cfg.sample_rate,
            frame_length=cfg.frame_length_ms / 1000.0,
            frame_shift=cfg.frame_shift_ms / 1000.0,
            round_to_power_of_two=cfg.round_to_power_of_two,
            remove_dc_offset=cfg.remove_dc_offset,
            preemph_coeff=cfg.preemph_coeff,
            window_type=cfg.window_type,
            dither=cfg.dither,
            snip_edges=cfg.snip_edges,
            energy_floor=cfg.energy_floor,
            low_freq=cfg.low_freq,
            high_freq=cfg.high_freq,
            num_filters=cfg.num_mel_bins,
        )
    )


def mono_waveform(samples: Tensor | np.ndarray, owner: str) -> Tensor | np.ndarray:
    """``samples`` as an (N,) waveform: an (N,) or (1, N) tensor or array (anything else that
    numpy takes becomes an array).

    Raises:
        ValueError: naming ``owner`` and the shape, for any other shape (several channels).
    """
    if not isinstance(samples, Tensor):
        samples = np.asarray(samples)
    shape = tuple(samples.shape)
    if len(shape) == 2 and shape[0] == 1:
        return samples[0]
    if len(shape) != 1:
        raise ValueError(f"{owner} expects a mono (N,) waveform, got shape {shape}")
    return samples


def compute_fbank(
    samples: Tensor | np.ndarray,
    sample_rate: int,
    cfg: FbankConfig | None = None,
    extractor: lhotse.Fbank | None = None,
) -> Tensor:
    """Computes log-mel features of one mono waveform, resampling it when needed.

    Args:
        samples: (N,) or (1, N) waveform: float in [-1, 1], or integer PCM scaled by
            :func:`asr.audio.as_waveform`'s rule (int16 / 32768, ...).
        sample_rate: sampling rate of ``samples`` in Hz.
        cfg: feature options (defaults to ``FbankConfig()``).
        extractor: an extractor made by :func:`make_lhotse_fbank` for ``cfg``, to reuse across
            calls.

    Returns:
        (T, F) float32 features, ``T = num_frames(N', cfg)`` where ``N'`` is the length after
        resampling to ``cfg.sample_rate``. Inputs shorter than one window are zero-padded to one
        window first (their few frames then differ from Kaldi's reflected edges).

    Raises:
        ValueError: for multi-channel input or a non-positive ``sample_rate``.
        asr.audio.AudioError: (a ValueError) for samples that are not audio (bool, complex,
            int64) or NaN / infinite ones, which would give NaN features.
    """
    cfg = cfg or FbankConfig()
    samples = mono_waveform(samples, "compute_fbank")
    if sample_rate <= 0:
        raise ValueError(f"compute_fbank: sample_rate must be > 0, got {sample_rate}")
    wave = torch.tensor(as_waveform(samples, "compute_fbank input", allow_empty=True))
    if sample_rate != cfg.sample_rate:
        # the resampler of asr.audio and lhotse: the stored features of a resampled cut
        wave = torch.from_numpy(resample(wave, sample_rate, cfg.sample_rate))
    total = num_frames(wave.numel(), cfg)
    if total == 0:
        return torch.zeros(0, cfg.num_mel_bins)
    if wave.numel() < cfg.window_samples:
        # lhotse's edge reflection fails for some inputs shorter than one window; such tiny
        # inputs (< 25 ms) are zero-padded to one window and the first ``total`` frames kept.
        wave = torch.nn.functional.pad(wave, (0, cfg.window_samples - wave.numel()))
    extractor = extractor or make_lhotse_fbank(cfg)
    feats = torch.as_tensor(extractor.extract(wave, cfg.sample_rate), dtype=torch.float32)
    return feats[:total]
