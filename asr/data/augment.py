"""Augmentation: speed perturbation of the training cuts before they are batched
(:class:`SpeedPerturbation`), additive noise (:class:`NoiseMixing`), vocal tract length
perturbation (VTLP) of the features, and SpecAugment's time masks kept within what an utterance's
length allows (:class:`UtteranceSpecAugment`).

VTLP (Jaitly & Hinton, "Vocal Tract Length Perturbation (VTLP) improves speech recognition",
ICML 2013 workshop) warps the frequency axis of each training utterance by a random factor
``alpha`` near 1, as a longer or shorter vocal tract would move the formants, without changing
pitch or tempo (speed perturbation changes all three). The warp is piecewise linear: ``f ->
alpha * f`` up to a knee, then a straight line that maps the top edge onto itself, so no band
leaves the spectrum. Here it is applied to stored log-mel features: output bin ``k`` (centre
frequency ``f_k`` of its filter) takes the log energy of the input at frequency ``W_alpha(f_k)``,
linearly interpolated between neighbouring bins on the filters' own mel scale (Kaldi's HTK mel, or
librosa's Slaney mel for ``mel_filters: librosa``), so it needs no audio and costs one gather per
utterance.

Randomness: every draw is a function of the data seed, the epoch and the identity of what is
drawn for (:func:`draw_seed`). Speed factors hash ``(seed, epoch, cut id)`` directly; the other
augmentations draw from the process' global RNGs (Python's :mod:`random`, NumPy's and torch's CPU
generator: lhotse's ``SpecAugment`` uses all three), which :class:`asr.data.dataset.AsrDataset`
seeds (:func:`seed_rngs`) per utterance (warp, SpecAugment) and per batch (noise, dither), and
puts back afterwards (:func:`preserved_rngs`). So the draws do not depend on DataLoader workers, on
``num_workers`` or on where a run was resumed, and the data path leaves the training loop's RNGs
alone.

Example:
    >>> warp = FrequencyWarp.from_fbank(FbankConfig(), FreqWarpConfig(enabled=True, max_warp=0.1))
    >>> feats = warp(feats)  # (T, F) -> (T, F), one alpha for the whole utterance
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import math
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from asr.data.config import FreqWarpConfig, SpecAugmentConfig
from asr.data.filtering import allowed_speeds, check_cut_audio
from asr.features.fbank import FbankConfig, filter_mel, htk_mel, mel_filter_centers

__all__ = ["FrequencyWarp", "NoiseMixing", "SpeedPerturbation", "UtteranceSpecAugment",
           "draw_seed", "preserved_rngs", "seed_rngs", "vtlp_warp"]


def draw_seed(*parts: object) -> int:
    """A 64-bit seed hashed from ``parts`` (e.g. the data seed, the epoch and a cut id).

    The same parts give the same seed in every process and Python session (no ``hash()``
    randomisation); parts are joined by ``":"`` before hashing.
    """
    key = ":".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def seed_rngs(seed: int) -> None:
    """Seeds Python's :mod:`random`, NumPy's global and torch's CPU generator with ``seed`` (CUDA
    generators are not touched): lhotse's ``SpecAugment`` draws from these three without taking a
    generator, so seeding them before a draw makes it a function of ``seed`` wherever it runs.
    Call it inside :func:`preserved_rngs`."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.default_generator.manual_seed(seed)


@contextlib.contextmanager
def preserved_rngs() -> Iterator[None]:
    """Puts back the states of the generators :func:`seed_rngs` seeds when the body ends."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.default_generator.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.default_generator.set_state(torch_state)


def vtlp_warp(freq: Tensor, alpha: float, knee: float, top: float) -> Tensor:
    """Jaitly & Hinton's piecewise-linear warp: ``alpha * f`` below the knee, then to ``top``.

    Args:
        freq: frequencies in Hz, any shape, within [0, top].
        alpha: warp factor (> 0).
        knee: ``F_hi`` of the paper: the linear part ends at ``knee * min(alpha, 1) / alpha``.
        top: the frequency mapped onto itself (the upper edge of the band).

    Returns:
        warped frequencies, same shape; monotone, ``0 -> 0`` and ``top -> top``.
    """
    if alpha <= 0:
        raise ValueError(f"warp factor must be > 0, got {alpha}")
    if not 0 < knee < top:
        raise ValueError(f"VTLP needs 0 < knee < top, got knee={knee}, top={top}")
    edge = knee * min(alpha, 1.0) / alpha
    upper = top - (top - knee * min(alpha, 1.0)) / (top - edge) * (top - freq)
    return torch.where(freq <= edge, alpha * freq, upper)


class FrequencyWarp:
    """VTLP of log-mel features, one random factor per utterance.

    Args:
        centres: (F,) filter centre frequencies in Hz.
        mel_low: mel value of the lowest filter edge.
        mel_spacing: mel distance between neighbouring filter centres.
        top: the upper band edge in Hz (mapped onto itself).
        cfg: warp range, knee (``F_hi``; 4800 Hz in the paper, for 16 kHz audio) and probability,
            validated by :class:`~asr.data.config.FreqWarpConfig`.
        to_mel: the mel scale the filters are equally spaced on (Hz tensor -> mel tensor):
            :func:`~asr.features.fbank.htk_mel` for Kaldi's filters.
    """

    def __init__(
        self, centres: Tensor, mel_low: float, mel_spacing: float, top: float, cfg: FreqWarpConfig,
        to_mel: Callable[[Tensor], Tensor] = htk_mel,
    ) -> None:
        if not cfg.knee_hz * (1 + cfg.max_warp) < top:
            raise ValueError(
                f"freq_warp.knee_hz ({cfg.knee_hz} Hz) times 1 + max_warp must stay below the "
                f"band's top edge ({top} Hz)"
            )
        self.centres = centres
        self.mel_low = mel_low
        self.mel_spacing = mel_spacing
        self.top = top
        self.cfg = cfg
        self.to_mel = to_mel

    @classmethod
    def from_fbank(cls, fbank: FbankConfig, cfg: FreqWarpConfig) -> FrequencyWarp:
        """The warp ``cfg`` for features made with ``fbank``: its band edges and its mel filters'
        centres and scale (Kaldi's HTK mel or librosa's Slaney mel, ``fbank.mel_filters``)."""
        centres, mel_low, spacing = mel_filter_centers(fbank)
        return cls(centres, mel_low, spacing, fbank.high_freq_hz, cfg,
                   functools.partial(filter_mel, fbank))

    def source_positions(self, alpha: float) -> Tensor:
        """(F,) fractional input-bin index read by each output bin for warp factor ``alpha``."""
        warped = vtlp_warp(self.centres, alpha, self.cfg.knee_hz, self.top)
        pos = (self.to_mel(warped) - self.mel_low) / self.mel_spacing - 1.0
        return pos.clamp(0.0, float(len(self.centres) - 1))

    def apply(self, feats: Tensor, alpha: float) -> Tensor:
        """Warps ``feats`` (T, F) log-mel features by ``alpha`` (1 leaves them unchanged)."""
        if feats.shape[-1] != len(self.centres):
            raise ValueError(
                f"features have {feats.shape[-1]} bins, the warp was built for {len(self.centres)}"
            )
        pos = self.source_positions(alpha)
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=len(self.centres) - 1)
        frac = (pos - lo).to(feats.dtype)
        return feats[..., lo] * (1.0 - frac) + feats[..., hi] * frac

    def __call__(self, feats: Tensor) -> Tensor:
        """Warps one utterance (T, F) with a random factor (or returns it unchanged)."""
        if random.random() >= self.cfg.probability:
            return feats
        alpha = random.uniform(1.0 - self.cfg.max_warp, 1.0 + self.cfg.max_warp)
        if math.isclose(alpha, 1.0):
            return feats
        return self.apply(feats, alpha)


class UtteranceSpecAugment:
    """lhotse's ``SpecAugment`` on one utterance, with no more time masks than its length allows.

    lhotse caps the frames of all time masks at ``budget = max_frames_mask_fraction * T`` and
    gives each of its ``min(num_frame_masks, ceil(budget / frames_mask_size))`` masks at most
    ``budget // masks`` frames: 0 when there are more masks than frames in the budget (with a
    narrow ``frames_mask_size`` up to ~60 frames, or any width under 7 frames at 0.15), and a
    0-frame mask makes it raise. Here the count is limited to ``floor(budget)``, which changes
    nothing where lhotse worked, and an utterance with less than one frame of budget is left as
    it is (warp and frequency masks included).

    Args:
        spec_augment: a lhotse ``SpecAugment``.
    """

    def __init__(self, spec_augment) -> None:
        self.spec_augment = spec_augment
        self._by_masks = {spec_augment.num_frame_masks: spec_augment}

    @classmethod
    def from_config(cls, cfg: SpecAugmentConfig) -> UtteranceSpecAugment:
        """The training SpecAugment of ``data.spec_augment``, its numbers passed to lhotse as
        icefall passes them.

        A width that never masks is refused (:meth:`SpecAugmentConfig.check_masks`).
        ``num_time_masks: 0`` (no time masks; lhotse divides by the
        count) runs as one time mask of width 1, which is empty and draws what that setting drew.

        Raises:
            ValueError: naming the ``data.spec_augment`` key of a mask width that cannot mask.
        """
        from lhotse.dataset import SpecAugment

        cfg.check_masks()
        time_masks, time_width = ((cfg.num_time_masks, cfg.max_time_mask_width)
                                  if cfg.num_time_masks > 0 else (1, 1))
        return cls(SpecAugment(
            time_warp_factor=cfg.time_warp_factor,
            num_feature_masks=cfg.num_freq_masks,
            features_mask_size=cfg.max_freq_mask_width,
            num_frame_masks=time_masks,
            frames_mask_size=time_width,
            max_frames_mask_fraction=cfg.max_time_mask_fraction,
            p=cfg.probability,
        ))

    def __call__(self, feats: Tensor) -> Tensor:
        """Augments (1, T, F) features of one utterance; returns (1, T, F)."""
        base = self.spec_augment
        budget = int(base.max_frames_mask_fraction * feats.shape[1])
        if budget < 1:
            return feats
        masks = min(base.num_frame_masks, budget)
        if masks not in self._by_masks:
            fewer = copy.copy(base)
            fewer.num_frame_masks = masks
            self._by_masks[masks] = fewer
        return self._by_masks[masks](feats)


class SpeedPerturbation:
    """On-the-fly speed perturbation of one cut (Ko et al., Interspeech 2015), applied to the cut
    stream BEFORE the sampler batches it, so that batches hold ``max_duration`` seconds of the
    perturbed audio (perturbing sampled batches, as lhotse's ``PerturbSpeed`` transform does,
    lets a factor 0.9 take them ~11 % over it).

    The factor of a cut is drawn from a hash of ``(seed, epoch, cut id)``: every rank sees the
    same durations (its sampler forms the same batches), and an epoch's factors do not depend on
    DataLoader workers or on batches skipped at resumption. The original (factor 1) and each of
    ``factors`` are equally likely, except for a cut that the training filter kept at only some
    of them (:func:`asr.data.filtering.allowed_speeds`): it is drawn among those, equally likely.
    Perturbed cuts keep their id and transcript; their stored features are dropped (they no
    longer match), as features are computed on the fly.

    Args:
        seed: the data seed.
        factors: speed factors besides 1 (> 1 is faster and shorter).
    """

    def __init__(self, seed: int, factors: tuple[float, ...]) -> None:
        self.seed = seed
        self.factors = tuple(factors)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draws the factors of ``epoch`` from now on."""
        self.epoch = epoch

    def factor(self, cut_id: str, allowed: Sequence[float] | None = None) -> float:
        """The speed factor of ``cut_id`` in the current epoch, drawn among the ``allowed``
        ones (``None``: 1 and every one of ``factors``).

        Raises:
            ValueError: naming the cut when none of the allowed factors is among those.
        """
        choices = (1.0, *self.factors)
        if allowed is not None:
            choices = tuple(f for f in choices if f in allowed)
            if not choices:
                raise ValueError(f"cut {cut_id!r} may be trained only at speeds {list(allowed)}, "
                                 f"none of which speed perturbation draws (1, {self.factors})")
        return choices[draw_seed(self.seed, self.epoch, cut_id) % len(choices)]

    def __call__(self, cut):
        """The cut at its factor (the cut itself at factor 1)."""
        factor = self.factor(cut.id, allowed_speeds(cut))
        if factor == 1.0:
            return cut
        return cut.drop_features().perturb_speed(factor, affix_id=False)


def _as_noise(cut, sample_rate: int):
    """``cut`` as noise to mix: without supervisions and resampled to ``sample_rate`` Hz (not
    when it is at that rate); a function, not a lambda, which lhotse's lazy map warns about."""
    if cut.supervisions:
        cut = cut.drop_supervisions()
    return cut if cut.sampling_rate == sample_rate else cut.resample(sample_rate)


class NoiseMixing:
    """Additive noise for a batch of cuts: each cut gets, with ``probability``, noise cuts mixed in
    over its whole duration at an SNR drawn uniformly from ``snr_db`` (lhotse's ``CutSet.mix``,
    what its ``CutMix`` transform does with ``pad_to_longest=False``); the cuts keep their ids.

    A noise cut longer than the cut it goes into gives a stretch of its own length from a random
    offset (lhotse's ``random_mix_offset``), so every part of a long noise recording is used; from
    offset 0 only its first seconds ever were (icefall cuts MUSAN into 10 s windows for the same
    reason). As lhotse makes such a stretch, it ends 50 ms before the cut does (noise shorter
    than the cut is followed by more noise cuts up to that point too). The noise cuts'
    supervisions are dropped: a noise manifest with transcripts (babble
    made of speech) would otherwise add its words to the transcript of every cut it goes into
    (a mixed cut's supervisions are all its tracks').

    The draws come from Python's global :mod:`random` (one seed for lhotse's mixer), which the
    dataset seeds per batch (:func:`seed_rngs`), unlike ``CutMix``, whose generator is made
    once and then runs on from batch to batch in each DataLoader worker.

    The noise recordings are resampled to ``sample_rate``, the rate of the dataset's cuts
    (lhotse's mixer refuses to mix two rates), once, here.

    Args:
        noise: eager CutSet of noise recordings (at least one).
        snr_db: (low, high) signal-to-noise ratio range in dB.
        probability: the chance that a cut gets noise.
        sample_rate: the rate in Hz of the cuts to mix (``data.fbank.sample_rate``).

    Raises:
        ValueError: on no noise cut.
    """

    def __init__(self, noise, snr_db: tuple[float, float], probability: float,
                 sample_rate: int) -> None:
        if len(noise) == 0:
            raise ValueError("NoiseMixing needs at least one noise cut")
        self.sample_rate = sample_rate
        self.noise = noise.map(functools.partial(_as_noise, sample_rate=sample_rate)).to_eager()
        self.snr_db = (float(snr_db[0]), float(snr_db[1]))
        self.probability = probability

    def __call__(self, cuts):
        """The cuts of a batch (CutSet) with noise mixed into some of them (an eager CutSet).

        Raises:
            ValueError: naming a cut that is not at ``sample_rate`` and its files, or holds
                several channels (:func:`asr.data.filtering.check_cut_audio`, which the data
                loaders run on every cut before any batch; a dataset used without them meets
                it here, not inside lhotse's mixer).
        """
        check_cut_audio(cuts, self.sample_rate)
        return cuts.mix(self.noise, snr=self.snr_db, mix_prob=self.probability,
                        preserve_id="left", seed=random.getrandbits(32),
                        random_mix_offset=True).to_eager()
