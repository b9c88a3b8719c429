"""Typed configuration of the data pipeline (manifests, sampling, features, augmentation).

SpecAugment: Park et al., "SpecAugment: A Simple Data Augmentation Method for Automatic Speech
Recognition", Interspeech 2019. Speed perturbation: Ko et al., Interspeech 2015.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from asr.features.fbank import FbankConfig

__all__ = ["DataConfig", "FreqWarpConfig", "NoiseConfig", "SpecAugmentConfig"]


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment (lhotse's implementation), applied per utterance to its valid frames only.

    Attributes:
        enabled: apply SpecAugment to training batches (never to evaluation batches).
        time_warp_factor: maximum warp in frames; 0 disables time warping.
        num_freq_masks: frequency masks per utterance; 0: none.
        max_freq_mask_width: the *exclusive* bound of a frequency mask's width: lhotse (as
            icefall, which passes it the same number) draws each width from
            ``[0, max_freq_mask_width)``, so 15 masks 0 to 14 mel bins (``F`` in the paper is
            the inclusive bound). At most ``fbank.num_mel_bins``; 1 would never mask and is
            refused when training starts (use ``num_freq_masks: 0``).
        num_time_masks: most time masks per utterance; 0: none. lhotse uses
            ``min(num_time_masks, ceil(budget / max_time_mask_width))`` of them, ``budget``
            being ``max_time_mask_fraction`` of the utterance's frames (10 masks of 100 frames
            at 0.15: 2 masks on a 10 s utterance), so long utterances get more.
        max_time_mask_width: the *exclusive* bound of a time mask's width, as
            ``max_freq_mask_width``: widths are drawn from ``[0, max_time_mask_width)`` frames
            (40: at most 39). 1 would never mask and is refused when training starts (use
            ``num_time_masks: 0``).
        max_time_mask_fraction: cap of all time masks together as a fraction of the utterance
            length (each mask's bound is ``min(max_time_mask_width, budget // masks)``,
            exclusive too, so a budget under 2 frames per mask masks nothing; ``p`` in the
            paper). Utterances with less than one frame of budget (under 7 frames at 0.15) are
            not augmented.
        probability: probability of augmenting a given utterance.
        start_epoch: first training epoch (1-based) that is augmented; the epochs before it train
            on clean features. A short run (few epochs) learns faster without masks, a long one
            generalises better with them: a later start serves both.
    """

    enabled: bool = True
    time_warp_factor: int = 80
    num_freq_masks: int = 2
    max_freq_mask_width: int = 27
    num_time_masks: int = 10
    max_time_mask_width: int = 100
    max_time_mask_fraction: float = 0.15
    probability: float = 0.9
    start_epoch: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"spec_augment.probability must be in [0, 1], got {self.probability}")
        if self.start_epoch < 1:
            raise ValueError(f"spec_augment.start_epoch must be >= 1, got {self.start_epoch}")
        if min(self.num_freq_masks, self.num_time_masks, self.time_warp_factor) < 0:
            raise ValueError("spec_augment mask counts and time_warp_factor must be >= 0")
        if min(self.max_freq_mask_width, self.max_time_mask_width) <= 0:
            raise ValueError("spec_augment mask widths must be > 0")
        if not 0.0 < self.max_time_mask_fraction <= 1.0:
            # lhotse divides by the number of masks the fraction allows (0 for a fraction of 0)
            raise ValueError("spec_augment.max_time_mask_fraction must be in (0, 1], got "
                             f"{self.max_time_mask_fraction}")

    def check_masks(self) -> None:
        """Refuses a mask width that can never mask, for training (a model trained with one,
        before this check, still loads for decoding).

        lhotse (as icefall) draws a mask's width from ``[0, width)``: ``max_*_mask_width: 1``
        with masks of that axis asked for would never mask.

        Raises:
            ValueError: naming the ``data.spec_augment`` key.
        """
        for axis, count, width, unit in (
                ("freq", self.num_freq_masks, self.max_freq_mask_width, "mel bins"),
                ("time", self.num_time_masks, self.max_time_mask_width, "frames")):
            if count > 0 and width < 2:
                raise ValueError(
                    f"data.spec_augment.max_{axis}_mask_width={width} never masks: lhotse (as "
                    f"icefall) draws each mask's width from [0, max_{axis}_mask_width), so its "
                    f"masks span at most max_{axis}_mask_width - 1 {unit}; use 2 or more, or "
                    f"data.spec_augment.num_{axis}_masks: 0 for none")


@dataclass(frozen=True)
class FreqWarpConfig:
    """Vocal tract length perturbation of the log-mel features (:mod:`asr.data.augment`).

    Attributes:
        enabled: warp training utterances (never evaluation ones).
        max_warp: the warp factor is uniform in ``[1 - max_warp, 1 + max_warp]``.
        knee_hz: where the linear part of the warp ends (``F_hi`` of Jaitly & Hinton).
        probability: probability of warping a given utterance.
    """

    enabled: bool = False
    max_warp: float = 0.1
    knee_hz: float = 4800.0
    probability: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.max_warp < 1.0:
            raise ValueError(f"freq_warp.max_warp must be in (0, 1), got {self.max_warp}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"freq_warp.probability must be in [0, 1], got {self.probability}")
        if self.knee_hz <= 0:
            raise ValueError(f"freq_warp.knee_hz must be > 0, got {self.knee_hz}")


@dataclass(frozen=True)
class NoiseConfig:
    """Additive noise from a lhotse CutSet (:class:`asr.data.augment.NoiseMixing`), training only.

    Attributes:
        cuts_path: noise CutSet manifest; ``None`` disables noise. With precomputed features the
            noise cuts need features too (lhotse then mixes in the feature domain), with
            on-the-fly features audio (both checked when training starts). A noise cut
            longer than the utterance gives it a stretch from a random offset (whole MUSAN
            recordings serve as they are); the noise cuts' supervisions are ignored.
        snr_db: (low, high) SNR range in dB, sampled uniformly per utterance.
        probability: probability of mixing noise into a given utterance.
    """

    cuts_path: Path | None = None
    snr_db: tuple[float, float] = (10.0, 20.0)
    probability: float = 0.5

    def __post_init__(self) -> None:
        if self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"noise.snr_db must be (low, high), got {self.snr_db}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"noise.probability must be in [0, 1], got {self.probability}")


@dataclass(frozen=True)
class DataConfig:
    """Where the cuts are and how batches are made.

    Attributes:
        manifest_dir: directory holding the cut manifests.
        train_cuts: training cut manifest file names (in ``manifest_dir``), concatenated lazily.
        train_shar_dirs: Lhotse Shar directories to train from instead of ``train_cuts``
            (``asr shar`` writes them; read lazily, shard order shuffled per epoch, see
            :mod:`asr.data.shar`); empty: use ``train_cuts``.
        dev_cuts: validation cut manifest file names.
        max_duration: total seconds of audio per batch (per rank), as lhotse bounds it (a
            batch may pass it by a little: :mod:`asr.data.sampler`).
        num_buckets: duration buckets of the ``DynamicBucketingSampler``.
        shuffle: shuffle training cuts (evaluation is never shuffled).
        buffer_size: cuts the sampler holds to shuffle and bucket from (lhotse's buffer): a
            shuffled manifest (``asr prepare shuffle``) plus a large buffer mix subsets and speeds
            in every batch.
        drop_last: yield only training batches that fill ``max_duration`` (evaluation keeps
            every batch): what no longer fills a batch in each duration bucket at the end of an
            epoch (at most about ``num_buckets * max_duration`` s), and with N ranks up to N - 1
            batches more, are left out of that epoch (logged, see :mod:`asr.data.epochs`).
        num_workers: DataLoader worker processes.
        on_the_fly_feats: compute fbank from audio in the DataLoader instead of reading stored
            features.
        speed_perturb: on-the-fly speed perturbation (0.9 / 1.0 / 1.1 equally likely, drawn
            per cut and epoch) of training cuts, before they are batched (batches hold at most
            ``max_duration`` s of perturbed audio); needs ``on_the_fly_feats`` because
            perturbing drops stored features. The training cuts' filter judges each cut at all
            three speeds and keeps it at those it passes at, which alone are drawn for it (a 19 s
            cut under a 20 s ``max_cut_duration``: 1.0 and 1.1; :mod:`asr.data.filtering`).
            Train it on manifests without the speed copies of ``asr prepare fbank
            --speed-perturb`` (those of ``asr prepare manifests``): a copy would be perturbed
            again, and the filter refuses it, naming it.
        spec_augment: SpecAugment settings.
        freq_warp: vocal tract length perturbation of the features (before SpecAugment).
        noise: additive noise settings.
        min_cut_duration: training cuts shorter than this (seconds) are dropped; with
            ``speed_perturb`` a cut is trained only at the speeds that keep it in range.
        max_cut_duration: training cuts longer than this (seconds) are dropped; with
            ``speed_perturb`` likewise. Neither limit applies to dev cuts (validation loss and
            dev WER see every dev utterance the tokenizer and encoder can align).
        seed: seed of the sampler shuffling and of the data augmentation RNGs.
        fbank: feature options (the same ones streaming inference uses).
    """

    manifest_dir: Path = Path("data/fbank")
    train_cuts: tuple[str, ...] = ("librispeech_cuts_train-clean-100.jsonl.gz",)
    train_shar_dirs: tuple[Path, ...] = ()
    dev_cuts: tuple[str, ...] = ("librispeech_cuts_dev-clean.jsonl.gz",)
    max_duration: float = 200.0
    num_buckets: int = 30
    shuffle: bool = True
    buffer_size: int = 20000
    drop_last: bool = True
    num_workers: int = 2
    on_the_fly_feats: bool = False
    speed_perturb: bool = False
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    freq_warp: FreqWarpConfig = field(default_factory=FreqWarpConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    min_cut_duration: float = 0.5
    max_cut_duration: float = 20.0
    seed: int = 42
    fbank: FbankConfig = field(default_factory=FbankConfig)

    def __post_init__(self) -> None:
        if self.max_duration <= 0:
            raise ValueError(f"data.max_duration must be > 0 seconds, got {self.max_duration}")
        if self.num_buckets < 1:
            raise ValueError(f"data.num_buckets must be >= 1, got {self.num_buckets}")
        if self.buffer_size < 1:
            raise ValueError(f"data.buffer_size must be >= 1, got {self.buffer_size}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if not 0 <= self.min_cut_duration <= self.max_cut_duration:
            raise ValueError(
                "data needs 0 <= min_cut_duration <= max_cut_duration, got "
                f"{self.min_cut_duration} and {self.max_cut_duration}"
            )
        if self.max_cut_duration > self.max_duration:
            raise ValueError(
                f"data.max_cut_duration ({self.max_cut_duration}) exceeds data.max_duration "
                f"({self.max_duration}): such cuts could never be batched"
            )
        if self.speed_perturb and not self.on_the_fly_feats:
            raise ValueError(
                "data.speed_perturb=true needs data.on_the_fly_feats=true (speed perturbation "
                "drops stored features); for stored features use "
                "`asr prepare fbank --speed-perturb`"
            )
        if self.spec_augment.enabled and (
                self.spec_augment.max_freq_mask_width > self.fbank.num_mel_bins):
            # lhotse then draws negative mask starts: the masks land on the top bins only
            raise ValueError(
                f"data.spec_augment.max_freq_mask_width ({self.spec_augment.max_freq_mask_width}) "
                f"exceeds data.fbank.num_mel_bins ({self.fbank.num_mel_bins})"
            )
        if self.fbank.mel_filters != "kaldi" and not self.on_the_fly_feats:
            raise ValueError(
                f"data.fbank.mel_filters={self.fbank.mel_filters} needs data.on_the_fly_feats=true "
                "(`asr prepare fbank` stores features with Kaldi mel filters)"
            )
