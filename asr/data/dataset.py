"""CutSet -> :class:`asr.types.Batch`: features, augmentation, tokens (lhotse map-style dataset).

The sampler yields CutSets; :class:`AsrDataset` turns one into a padded batch. Training cuts are
speed-perturbed before the sampler sees them (:class:`asr.data.augment.SpeedPerturbation`, Ko et
al. Interspeech 2015, so batches keep to ``max_duration``); training batches go through cut
transforms (additive noise: :class:`asr.data.augment.NoiseMixing`) before feature extraction and
SpecAugment (Park et al., Interspeech 2019, lhotse ``SpecAugment``) after it, optionally preceded by
vocal tract length perturbation of the features (:mod:`asr.data.augment`); evaluation batches get
none, and their on-the-fly features no dither.

Random draws are a function of ``(data seed, epoch, cut ids)`` only: the cut transforms and the
feature loading (dither) of a batch run under RNGs seeded from its cut ids, the feature transforms
and SpecAugment of an utterance under RNGs seeded from its cut id
(:func:`asr.data.augment.seed_rngs`), and the caller's RNGs are left as they were. A batch is
therefore augmented the same whichever DataLoader worker makes it, with any ``num_workers``, and in
a run resumed mid-epoch. Copies of a cut under one id would therefore be augmented the same way:
training renames the repeats of an id before they get here (:mod:`asr.data.cut_ids`), and an
evaluation set must not have any.

Features are either read from storage (lhotse ``PrecomputedFeatures``) or computed from audio by
lhotse ``OnTheFlyFeatures`` with the extractor of :func:`asr.features.fbank.make_lhotse_fbank`,
the same one that stored them. Padding frames are zeros (lhotse pads with log(1e-10), we reset
them so ``Batch.feats`` is zero beyond ``feat_lens`` as documented).

Example:
    >>> cuts = load_cuts(cfg.manifest_dir, cfg.train_cuts)
    >>> loader = make_dataloader(cuts, cfg, tokenizer, train=True)
    >>> for batch in loader:  # asr.types.Batch
    ...     enc, enc_lens = encoder(batch.feats, batch.feat_lens)
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from asr.data.augment import (
    FrequencyWarp,
    NoiseMixing,
    SpeedPerturbation,
    UtteranceSpecAugment,
    draw_seed,
    preserved_rngs,
    seed_rngs,
)
from asr.data.config import DataConfig
from asr.data.filtering import (
    TextEncoder,
    check_cut_audio,
    cut_files,
    cut_text,
    encode_cut_text,
    error_reason,
    unreadable_cut_error,
)
from asr.data.sampler import lazy_view, make_sampler, resolve_rank_world_size
from asr.features.fbank import make_lhotse_fbank
from asr.fileio import check_gzip_name, open_maybe_gzip
from asr.types import TOKEN_PAD_ID, Batch

logger = logging.getLogger(__name__)

__all__ = [
    "AsrDataset",
    "DataError",
    "TextEncoder",
    "check_cut_manifest",
    "checked_manifests",
    "cut_manifest_lines",
    "load_cuts",
    "make_dataloader",
    "numbered_cut_lines",
    "pad_tokens",
    "speed_factors",
]

#: Speed factors of on-the-fly perturbation besides 1.0 (0.9, 1.0 and 1.1 are equally likely).
ON_THE_FLY_SPEED_FACTORS = (0.9, 1.1)


def speed_factors(cfg: DataConfig) -> tuple[float, ...]:
    """Every speed a training cut can be drawn at under ``cfg``: 1.0, plus the on-the-fly
    factors with ``cfg.speed_perturb`` (what the training cuts' filter judges them at)."""
    return (1.0, *ON_THE_FLY_SPEED_FACTORS) if cfg.speed_perturb else (1.0,)


class DataError(ValueError):
    """A cut whose features or audio cannot be loaded (the message names the cut and its files)."""


def pad_tokens(token_seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Pads token id lists with ``TOKEN_PAD_ID``.

    Returns:
        tokens (B, U) int64 and token_lens (B,) int64, ``U = max(token_lens)`` (0 if all empty).
    """
    lens = torch.tensor([len(seq) for seq in token_seqs], dtype=torch.int64)
    max_len = int(lens.max()) if len(token_seqs) else 0
    tokens = torch.full((len(token_seqs), max_len), TOKEN_PAD_ID, dtype=torch.int64)
    for i, seq in enumerate(token_seqs):
        tokens[i, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.int64)
    return tokens, lens


class AsrDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by CutSets (lhotse style): ``dataset[cuts] -> Batch``.

    Args:
        encoder: tokenizer with ``encode(text) -> list[int]``.
        input_strategy: lhotse ``BatchIO`` (``PrecomputedFeatures`` or ``OnTheFlyFeatures``)
            mapping a CutSet to (feats (B, T, F), feat_lens (B,)).
        cut_transforms: CutSet -> CutSet callables applied before feature extraction (with the
            global RNGs seeded from the seed, the epoch and the batch's cut ids).
        spec_augment: (1, T, F) -> (1, T, F) applied to each utterance's valid frames, or None
            (from the config: lhotse's ``SpecAugment`` in a
            :class:`~asr.data.augment.UtteranceSpecAugment`).
        feature_transforms: (T, F) -> (T, F) callables applied to each utterance's valid frames
            before SpecAugment (e.g. :class:`asr.data.augment.FrequencyWarp`); they and
            ``spec_augment`` draw from the global RNGs seeded from the seed, the epoch and the
            utterance's cut id.
        seed: the data seed of every random draw.
        spec_augment_start_epoch: first epoch (1-based, see :meth:`set_epoch`) that
            ``spec_augment`` applies to; the dataset starts at epoch 1.
        speed_perturbation: the perturbation the training cuts went through before sampling
            (:func:`make_dataloader` maps them), whose epoch :meth:`set_epoch` sets; None when off.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        input_strategy: Callable,
        cut_transforms: Sequence[Callable] = (),
        spec_augment: Callable[[Tensor], Tensor] | None = None,
        seed: int = 0,
        feature_transforms: Sequence[Callable[[Tensor], Tensor]] = (),
        spec_augment_start_epoch: int = 1,
        speed_perturbation: SpeedPerturbation | None = None,
    ) -> None:
        super().__init__()
        self.speed_perturbation = speed_perturbation
        self.feature_transforms = list(feature_transforms)
        self.encoder = encoder
        self.input_strategy = input_strategy
        self.cut_transforms = list(cut_transforms)
        self.spec_augment = spec_augment
        self.spec_augment_start_epoch = spec_augment_start_epoch
        self.epoch = 1
        self.seed = seed

    @classmethod
    def from_config(cls, cfg: DataConfig, encoder: TextEncoder, train: bool) -> AsrDataset:
        """Builds the training (``train=True``: augmentation as configured) or evaluation dataset
        (no augmentation; on-the-fly features without ``cfg.fbank.dither``, as recognition
        computes them: :meth:`~asr.features.fbank.FbankConfig.for_recognition`).

        Speed perturbation is not applied here but to the cuts before sampling: the training
        dataset only carries the :class:`~asr.data.augment.SpeedPerturbation` (see
        :func:`make_dataloader`).

        Raises:
            ValueError: for training with ``cfg.fbank.dither`` on stored features (naming the
                fields): dither is added where features are computed, and stored ones were
                computed without it, so the setting would be ignored; naming
                ``data.noise.cuts_path`` and a noise cut that cannot be mixed: without stored
                features of ``cfg.fbank`` for stored training features, without audio (or
                with several channels) for on-the-fly ones.
        """
        from lhotse.dataset import OnTheFlyFeatures, PrecomputedFeatures

        if train and cfg.fbank.dither > 0 and not cfg.on_the_fly_feats:
            raise ValueError(
                f"data.fbank.dither={cfg.fbank.dither} needs data.on_the_fly_feats=true: dither "
                "is added to the samples where features are computed, and stored features "
                "(`asr prepare fbank`) have none; set data.on_the_fly_feats=true, or "
                "data.fbank.dither: 0"
            )
        if cfg.on_the_fly_feats:
            # Per-utterance extraction: lhotse's batched path zero-pads the waveforms, which
            # changes the last frame of all but the longest utterance (Kaldi reflects the edge).
            # evaluation batches: the recognition front end, without the training dither
            fbank = cfg.fbank if train else cfg.fbank.for_recognition()
            input_strategy = OnTheFlyFeatures(make_lhotse_fbank(fbank), use_batch_extract=False)
        else:
            input_strategy = PrecomputedFeatures()
        transforms: list[Callable] = []
        spec_augment = None
        if train and cfg.noise.cuts_path is not None:
            from lhotse import CutSet

            check_gzip_name(cfg.noise.cuts_path, "data.noise.cuts_path: cut manifest")
            noise = CutSet.from_file(cfg.noise.cuts_path)
            if noise is None or len(noise) == 0:  # lhotse reads an empty manifest as None
                raise ValueError(f"data.noise.cuts_path {cfg.noise.cuts_path} holds no cuts")
            noise = noise.to_eager()
            if cfg.on_the_fly_feats:
                _check_noise_audio(noise, cfg)
            else:
                _check_stored_noise(noise, cfg)
            transforms.append(NoiseMixing(noise, cfg.noise.snr_db, cfg.noise.probability,
                                          cfg.fbank.sample_rate))
        feature_transforms = []
        if train and cfg.freq_warp.enabled:
            feature_transforms.append(FrequencyWarp.from_fbank(cfg.fbank, cfg.freq_warp))
        sa = cfg.spec_augment
        if train and sa.enabled:
            spec_augment = UtteranceSpecAugment.from_config(sa)
        speed = (SpeedPerturbation(cfg.seed, ON_THE_FLY_SPEED_FACTORS)
                 if train and cfg.speed_perturb else None)
        return cls(encoder, input_strategy, transforms, spec_augment, cfg.seed, feature_transforms,
                   spec_augment_start_epoch=sa.start_epoch, speed_perturbation=speed)

    def set_epoch(self, epoch: int) -> None:
        """Sets the training epoch (1-based) the next batches belong to.

        SpecAugment applies from ``spec_augment_start_epoch`` on, and the speed factors and the
        other augmentation draws are those of ``epoch``. DataLoader workers receive a copy of the
        dataset when an epoch's iteration starts, so call this before that.
        """
        self.epoch = epoch
        if self.speed_perturbation is not None:
            self.speed_perturbation.set_epoch(epoch)

    @property
    def spec_augment_active(self) -> bool:
        """Whether SpecAugment applies to this epoch's batches."""
        return self.spec_augment is not None and self.epoch >= self.spec_augment_start_epoch

    def seed_for(self, *identity: str) -> int:
        """The seed of the draws for ``identity`` (a cut id, or a batch's) in this epoch."""
        return draw_seed(self.seed, self.epoch, *identity)

    def __getitem__(self, cuts) -> Batch:
        """Turns a CutSet into a Batch (cuts sorted by decreasing duration).

        Each cut's features span its whole audio; its text is that of all its supervisions in
        the order they start (:func:`~asr.data.filtering.cut_text`).

        Returns:
            Batch with feats (B, T, F) float32 zero-padded, feat_lens (B,), tokens (B, U)
            padded with ``TOKEN_PAD_ID``, token_lens (B,), texts and cut_ids.

        Raises:
            ValueError: on no cut, naming a cut without any supervision and its files (the
                training filter drops such cuts as ``empty_text``), or naming a cut and its
                supervisions' text when the tokenizer refuses the text (the filter, when it
                runs, refuses it first).
            DataError: naming a cut whose data cannot be loaded and its files.
        """
        if len(cuts) == 0:
            raise ValueError("AsrDataset got an empty CutSet")
        for cut in cuts:
            if not cut.supervisions:
                raise ValueError(f"cut {cut.id!r} ({cut_files(cut)}) has no supervision "
                                 "(nothing to transcribe)")
        with preserved_rngs():
            seed_rngs(self.seed_for("batch", *(cut.id for cut in cuts)))
            for transform in self.cut_transforms:
                cuts = transform(cuts)
            cuts = cuts.sort_by_duration(ascending=False)
            feats, feat_lens = self._load_inputs(cuts)
            feat_lens = feat_lens.to(torch.int64)
            feats = self._augment_features(cuts, feats.to(torch.float32), feat_lens)
        frame_ids = torch.arange(feats.shape[1]).unsqueeze(0)
        feats = feats.masked_fill((frame_ids >= feat_lens.unsqueeze(1)).unsqueeze(2), 0.0)
        texts = [cut_text(cut) for cut in cuts]
        tokens, token_lens = pad_tokens([encode_cut_text(cut, self.encoder, text)
                                         for cut, text in zip(cuts, texts)])
        return Batch(
            feats=feats,
            feat_lens=feat_lens,
            tokens=tokens,
            token_lens=token_lens,
            texts=texts,
            cut_ids=[cut.id for cut in cuts],
        )

    def _augment_features(self, cuts, feats: Tensor, feat_lens: Tensor) -> Tensor:
        """The feature transforms and SpecAugment of each utterance, drawn with the RNGs seeded
        from its cut id (``feats`` (B, T, F) float32 and ``feat_lens`` (B,) in ``cuts``' order);
        the input itself is left as it is."""
        spec_augment = self.spec_augment_active
        if not (self.feature_transforms or spec_augment):
            return feats
        feats = feats.clone()
        for i, (cut, length) in enumerate(zip(cuts, feat_lens.tolist())):
            seed_rngs(self.seed_for("utterance", cut.id))
            for transform in self.feature_transforms:
                feats[i, :length] = transform(feats[i, :length])
            if spec_augment:
                feats[i : i + 1, :length] = self.spec_augment(feats[i : i + 1, :length])
        return feats

    def _load_inputs(self, cuts) -> tuple[Tensor, Tensor]:
        """(feats (B, T, F), feat_lens (B,)) of ``cuts`` by the input strategy.

        Raises:
            DataError: naming the first cut that cannot be loaded and its files (the
                strategy's own errors name at most one of them): a cut whose features (stored
                ones) or audio (on the fly) cannot be read, in the words of
                :func:`~asr.data.filtering.unreadable_cut_error`; else the first cut the
                strategy fails on alone, or the batch.
        """
        try:
            return self.input_strategy(cuts)[:2]
        except Exception as err:  # lhotse, lilcom, soundfile, ... each raise their own types
            batch_err = err
        from lhotse import CutSet
        from lhotse.dataset import PrecomputedFeatures

        field = "features" if isinstance(self.input_strategy, PrecomputedFeatures) else "recording"
        for cut in cuts:
            message = unreadable_cut_error(cut, [field])
            if message is not None:
                raise DataError(message) from batch_err
        for cut in cuts:  # every cut's data reads: what fails is the strategy on one of them
            try:
                self.input_strategy(CutSet.from_cuts([cut]))
            except Exception as err:  # noqa: BLE001 - the same errors, one cut at a time
                raise DataError(f"cannot load cut {cut.id!r} ({cut_files(cut)}): "
                                f"{error_reason(err)}") from err
        raise DataError(
            f"cannot load the batch of {len(cuts)} cuts starting with {cuts[0].id!r} "
            f"({cut_files(cuts[0])}): {error_reason(batch_err)}"
        ) from batch_err


def _check_stored_noise(noise, cfg: DataConfig) -> None:
    """Refuses noise cuts that cannot be mixed into stored training features: lhotse then mixes
    in the feature domain, so each noise cut needs stored features of ``cfg.fbank``'s rate,
    mel bins and frame shift (:func:`~asr.data.filtering.check_cut_audio`); without them the
    first training batch failed inside lhotse's mixer, naming no noise file.

    Raises:
        ValueError: naming ``data.noise.cuts_path``, a noise cut and its files.
    """
    try:
        check_cut_audio(noise, cfg.fbank.sample_rate, stored=cfg.fbank)
    except ValueError as err:
        raise ValueError(
            f"data.noise.cuts_path {cfg.noise.cuts_path}: noise is mixed into stored training "
            f"features (data.on_the_fly_feats=false) in the feature domain: {err}"
        ) from None


def _check_noise_audio(noise, cfg: DataConfig) -> None:
    """Refuses noise cuts without audio for on-the-fly training features, into whose audio
    the noise is mixed: the first training batch failed on one, its error naming the training
    cut's audio (``AttributeError: 'NoneType' object has no attribute 'size'``), not the noise.
    Refuses noise of several channels too (:func:`~asr.data.filtering.check_cut_audio`, at any
    rate: the noise is resampled): mixed into a mono cut it made a cut of as many channels,
    whose features lhotse computes from the first alone, silently dropping the others (noise
    corpora such as MUSAN are mono; training cuts of several channels are refused alike).

    Raises:
        ValueError: naming ``data.noise.cuts_path``, how many noise cuts lack audio (or hold
            several channels), the first and its files.
    """
    where = (f"data.noise.cuts_path {cfg.noise.cuts_path}: noise is mixed into the audio of "
             "on-the-fly training features (data.on_the_fly_feats=true)")
    silent = [cut for cut in noise if not cut.has_recording]
    if silent:
        raise ValueError(
            f"{where}, but {len(silent)} noise cuts have no audio, e.g. cut {silent[0].id!r} "
            f"({cut_files(silent[0])}); use a noise manifest whose cuts have recordings"
        )
    try:
        check_cut_audio(noise, None)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def check_cut_manifest(path: Path, read_by_lhotse: bool = True, allow_empty: bool = True
                       ) -> None:
    """Checks the cut manifest ``path`` before it is read: its first line is a JSON cut (an
    empty manifest passes with ``allow_empty``), and its name ends in ``.gz`` if and only if it
    is gzip-compressed (:func:`asr.fileio.check_gzip_name`: lhotse goes by the name). Read
    lazily by lhotse, a text file, a corrupt gzip or a misnamed one failed later with a bare
    JSON, gzip or UTF-8 error that named no file. Reads only up to that line
    (:func:`cut_manifest_lines`).

    Args:
        path: the manifest.
        read_by_lhotse: whether lhotse reads it (a training manifest), or asr by its bytes (an
            evaluation set, :func:`asr.data.cut_ids.load_eval_cuts`): what a name error says.
        allow_empty: whether a manifest without a cut passes (not for the noise cuts, which
            noise is drawn from).

    Raises:
        ValueError: naming ``path`` and what is wrong.
    """
    lines = cut_manifest_lines(path)
    try:
        first = next(lines, None)
    finally:
        lines.close()
    check_gzip_name(path, "cut manifest", read_by_lhotse)
    if first is None and not allow_empty:
        raise ValueError(f"cut manifest {path} holds no cuts")


def cut_manifest_lines(path: Path) -> Iterator[bytes]:
    """The non-empty lines of the cut manifest ``path`` (decompressed when it is gzip, told by
    its first bytes: :func:`asr.fileio.open_maybe_gzip`), each ending in a newline, read in one
    pass; the first is checked to be a JSON cut before it is given.

    Raises:
        ValueError: naming ``path`` when it cannot be read (a broken or cut-short gzip, a first
            line that is not UTF-8) or when its first line is no JSON cut.
    """
    for _, line in numbered_cut_lines(path):
        yield line


def numbered_cut_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """:func:`cut_manifest_lines` with the number of each line in the file (from 1, blank lines
    counted), for messages that point at a line."""
    checked = False
    try:
        with open_maybe_gzip(path) as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                if not checked:
                    _check_first_cut(path, line)
                    checked = True
                yield line_no, line if line.endswith(b"\n") else line + b"\n"
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"cut manifest {path} cannot be read: {err}") from None


def _check_first_cut(path: Path, line: bytes) -> None:
    """Raises ValueError naming ``path`` unless ``line``, its first one, is a JSON cut."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"cut manifest {path} cannot be read: {err}") from None
    try:
        cut = json.loads(text)
    except json.JSONDecodeError:
        cut = None
    if not isinstance(cut, dict) or "id" not in cut:
        raise ValueError(f"{path} is not a lhotse cut manifest: its first line is "
                         f"{text.strip()[:80]!r}, not a JSON cut")


def load_cuts(manifest_dir: str | Path, names: Sequence[str]):
    """Opens cut manifests ``manifest_dir/name`` lazily, concatenated in order.

    Raises:
        FileNotFoundError: naming the first missing manifest.
        ValueError: naming a manifest that is unreadable or whose first line is no JSON cut.
    """
    from lhotse import CutSet, combine

    lazy = [CutSet.from_jsonl_lazy(path) for path in checked_manifests(manifest_dir, names)]
    return lazy[0] if len(lazy) == 1 else combine(*lazy)


def checked_manifests(
    manifest_dir: str | Path, names: Sequence[str], read_by_lhotse: bool = True,
    allow_empty: bool = True,
) -> list[Path]:
    """The paths ``manifest_dir/name`` of the cut manifests ``names``, each checked to exist and
    then (in order) by :func:`check_cut_manifest` (``read_by_lhotse``, ``allow_empty``: see
    there), which reads only their first lines.

    Raises:
        FileNotFoundError: naming the first missing manifest.
        ValueError: for no ``names``, or naming a manifest that is unreadable or whose first
            line is no JSON cut.
    """
    if not names:
        raise ValueError(f"no cut manifest names given for {manifest_dir}")
    paths = [Path(manifest_dir) / name for name in names]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"cut manifest {path} does not exist")
        check_cut_manifest(path, read_by_lhotse, allow_empty)
    return paths


def make_dataloader(
    cuts,
    cfg: DataConfig,
    encoder: TextEncoder,
    train: bool,
    rank: int | None = None,
    world_size: int | None = None,
    bucket_cuts=None,
) -> torch.utils.data.DataLoader:
    """DataLoader of :class:`~asr.types.Batch` over ``cuts`` (sampler + dataset from ``cfg``).

    ``bucket_cuts``: see :func:`asr.data.sampler.make_sampler`.

    The sampler is reachable as ``loader.sampler`` (``set_epoch``, ``state_dict``); the
    augmentation draws depend on ``cfg.seed``, the epoch and the cut ids only (see the module
    docstring), not on the workers. With ``cfg.speed_perturb``
    the training cuts reach the sampler speed-perturbed, with the factors of the epoch last
    given to ``loader.dataset.set_epoch``.

    Raises:
        ValueError: naming a cut that is not at the features' sample rate (``cfg.fbank``) or
            holds several audio channels, or, without ``cfg.on_the_fly_feats``, has no stored
            features or stored features of other mel bins or frame shift than ``cfg.fbank``
            (:func:`~asr.data.filtering.check_cut_audio`).
    """
    rank, world_size = resolve_rank_world_size(rank, world_size)
    check_cut_audio(cuts if bucket_cuts is None else bucket_cuts, cfg.fbank.sample_rate,
                    stored=None if cfg.on_the_fly_feats else cfg.fbank)
    dataset = AsrDataset.from_config(cfg, encoder, train=train)
    if dataset.speed_perturbation is not None:
        # the buckets are estimated from the cuts as they are (the factors average out)
        bucket_cuts = cuts if bucket_cuts is None else bucket_cuts
        cuts = lazy_view(cuts).map(dataset.speed_perturbation)
    sampler = make_sampler(
        cuts, cfg, train=train, rank=rank, world_size=world_size, bucket_cuts=bucket_cuts
    )
    return torch.utils.data.DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=cfg.num_workers,
        persistent_workers=False,
    )
