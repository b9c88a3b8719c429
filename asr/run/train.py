"""Training one :class:`asr.experiment.ExperimentConfig`: the application behind ``asr train``.

:func:`train_experiment` wires the layers together: tokenizer, model, training / dev data (with
utterances that have more tokens than the encoder's frames filtered out, by the encoder's own
length rule), the :class:`asr.train.trainer.Trainer` (resumed from the newest ``checkpoint-N.pt``
of the experiment directory), and an end-of-epoch dev WER with the greedy searcher of the first
trained head (:func:`asr.decoding.registry.searcher_for`).

Launch with ``torchrun --nproc-per-node N -m asr.cli.main train ...`` for DDP: every rank reads
the same shuffled cut stream and keeps every N-th batch (see :mod:`asr.data.sampler`); the epochs'
batches and exact mid-epoch resumption are :class:`asr.data.epochs.EpochBatches`'. The validation
loss and the dev WER are computed by every rank on its share of the dev cuts and summed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lhotse import CutSet

from asr.config import ConfigError, config_path_hint, to_dict
from asr.data.cut_ids import DuplicateIdError, RepeatCounter, Repeats, load_eval_cuts
from asr.data.dataset import (
    checked_manifests,
    load_cuts,
    make_dataloader,
    speed_factors,
)
from asr.data.epochs import EpochBatches
from asr.data.filtering import filter_cuts
from asr.data.shar import SharCuts, shar_fields
from asr.decoding import build_searcher
from asr.decoding.registry import searcher_for
from asr.experiment import ExperimentConfig, build_model
from asr.features.cmvn import compute_cmvn_stats
from asr.features.fbank import make_lhotse_fbank
from asr.metrics.wer import ErrorStats
from asr.model import ASRModel
from asr.run.evaluate import recognize, score_recognitions
from asr.tokenizers import Tokenizer, load_tokenizer
from asr.tokenizers.base import check_vocabulary
from asr.train.distributed import (
    DistInfo,
    all_reduce_sums,
    cleanup_distributed,
    setup_distributed,
)
from asr.train.state import Progress
from asr.train.trainer import Trainer

logger = logging.getLogger(__name__)

__all__ = [
    "DevWer",
    "check_data_inputs",
    "check_dev_cuts",
    "check_training_config",
    "seed_everything",
    "spread_subset",
    "train_experiment",
]


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class DevWer:
    """``(model) -> dev WER %`` with the greedy searcher of the first trained head; None when no
    trained head has a greedy searcher (an attention decoder alone) or the decoding failed.

    Distributed (``dist.world_size > 1``), it is a collective that every rank calls: each rank
    decodes its own share of the dev cuts (:func:`asr.data.sampler.make_sampler`: every cut
    once) and the error counts of all the shares are summed in one all-reduce, so that every
    rank gets the WER that one process decoding every cut gets, and no rank waits in a
    collective while another decodes the whole set (NCCL gives up on a collective after 10
    minutes by default: a large dev set decoded by one rank would kill the job). A rank whose
    share fails logs its traceback (on its stderr; rank 0's reaches ``train.log`` too) and makes
    it None on every rank; the same all-reduce carries a failure flag per rank, so that rank 0's
    warning names the ranks that failed. The WER is logged by rank 0.

    Args:
        cuts: dev CutSet.
        cfg: experiment configuration (its ``data`` and ``search`` sections are used).
        tokenizer: ids -> text.
        device: where to decode.
        max_utterances: decode at most this many dev cuts (0: all), spread evenly over the dev
            cuts (so that every dev set of ``data.dev_cuts`` counts, not just the first one);
            the cap is on all the ranks' shares together.
        dist: this process' place in the job (default: the only process).
    """

    def __init__(self, cuts: CutSet, cfg: ExperimentConfig, tokenizer: Tokenizer,
                 device: torch.device, max_utterances: int = 0,
                 dist: DistInfo | None = None) -> None:
        self.cuts = spread_subset(cuts, max_utterances)
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.device = device
        self.dist = dist or DistInfo(device=device)

    def __call__(self, model: ASRModel) -> float | None:
        # the same answer on every rank (the same model), before any collective
        name = searcher_for("greedy", model, trained_only=True)
        if name is None:
            return None
        stats, utterances, seconds, failed = ErrorStats(), 0, 0.0, 0
        was_training = model.training
        model.eval()
        try:
            # plain greedy: the decoding LM and hotwords of search.* are not this metric's, and
            # a greedy searcher would warn at every epoch that it uses neither
            search = dataclasses.replace(self.cfg.search, lm_path=None, hotwords_file=None,
                                         hotwords=None)
            searcher = build_searcher(name, model, search, tokenizer=self.tokenizer)
            loader = make_dataloader(self.cuts, self.cfg.data, self.tokenizer, train=False,
                                     rank=self.dist.rank, world_size=self.dist.world_size)
            recognitions, seconds = recognize(model, searcher, loader, self.tokenizer,
                                              self.device, progress=False)
            stats, utterances = score_recognitions(recognitions).stats, len(recognitions)
        except Exception:  # an auxiliary metric must never cost the training run
            logger.exception("dev WER evaluation with %s failed%s; training goes on without it",
                             name, f" on rank {self.dist.rank}" if self.dist.distributed else "")
            failed = 1
        finally:
            model.train(was_training)
        # every rank reaches this one all-reduce, a failed one too (else the others would wait);
        # with a failure flag per rank, so that rank 0 can name the ranks that failed
        flags = [0] * self.dist.world_size
        flags[self.dist.rank] = failed
        sums = all_reduce_sums(
            [stats.num_ref, stats.ins, stats.dels, stats.subs, utterances, *flags], self.dist)
        num_ref, ins, dels, subs, utterances = sums[:5]
        failed_ranks = [rank for rank, flag in enumerate(sums[5:]) if flag]
        if failed_ranks:
            if self.dist.distributed and self.dist.is_main:
                logger.warning("dev WER: the decoding failed on rank %s of %d ranks (each logged "
                               "its traceback on its own stderr); training goes on without it",
                               ", ".join(map(str, failed_ranks)), self.dist.world_size)
            return None
        wer = 100.0 * ErrorStats(int(num_ref), int(ins), int(dels), int(subs)).wer
        if self.dist.distributed and self.dist.is_main:
            logger.info("dev WER %.2f%% (%s, %d utterances on %d ranks; rank 0's share in %.1f s)",
                        wer, name, int(utterances), self.dist.world_size, seconds)
        elif self.dist.is_main:
            logger.info("dev WER %.2f%% (%s, %d utterances, %.1f s)", wer, name, int(utterances),
                        seconds)
        return wer


def spread_subset(cuts: CutSet, count: int) -> CutSet:
    """At most ``count`` cuts of an eager CutSet, evenly spaced over it (``count <= 0``: all)."""
    total = len(cuts)
    if count <= 0 or total <= count:
        return cuts
    ids = [cut.id for cut in cuts]
    return cuts.subset(cut_ids=[ids[i * total // count] for i in range(count)])


def _filter_or_fail(cfg: ExperimentConfig, model: ASRModel, cuts, tokenizer: Tokenizer,
                    where: str, what: str, apply_to=None, train: bool = False,
                    on_kept: Callable[[Any], None] | None = None):
    """``filter_cuts`` with the encoder's length rule; ``train`` cuts also with the data
    config's duration limits, judged at every speed on-the-fly perturbation can give them (and
    kept, marked, at those they pass at). Dev cuts of any duration are kept, as icefall
    validates on all of them (the limits are about training batches; LibriSpeech's dev sets
    hold utterances up to ~33 s, over the default 20 s). An error naming ``where`` if no cut is
    left. ``on_kept``: as :func:`asr.data.filtering.filter_cuts`'s."""
    kept, stats = filter_cuts(
        cuts, tokenizer, model.encoder.output_length,
        min_duration=cfg.data.min_cut_duration if train else 0.0,
        max_duration=cfg.data.max_cut_duration if train else float("inf"),
        frame_shift=cfg.data.fbank.frame_shift,
        apply_to=apply_to, speed_factors=speed_factors(cfg.data) if train else (1.0,),
        name=f"{what} cuts", on_kept=on_kept,
    )
    if stats.kept == 0:
        raise ValueError(f"no {what} cuts left in {where} after filtering ({stats})")
    return kept


def _load_filtered(cfg: ExperimentConfig, model: ASRModel, names: Sequence[str],
                   tokenizer: Tokenizer, what: str, train: bool = False, cuts=None,
                   dev_ids: frozenset[str] = frozenset()):
    """The filtered cuts of the manifests ``names`` (eager; ``cuts``: theirs, loaded already).
    Dev cuts must name each utterance once (:func:`asr.data.cut_ids.load_eval_cuts`); training
    cuts that repeat an id get their own ids, and so their own augmentation
    (:meth:`asr.data.cut_ids.Repeats.rename`), and training cuts of the ids ``dev_ids`` are
    warned of (:func:`_warn_of_dev_cuts_in_training`)."""
    manifest_dir = cfg.data.manifest_dir
    if cuts is None:
        cuts = load_cuts(manifest_dir, names) if train else load_eval_cuts(manifest_dir, names)
    where = f"{manifest_dir}/{list(names)}"
    kept = _filter_or_fail(cfg, model, cuts, tokenizer, where, what, train=train).to_eager()
    if train:  # the ids are in memory: no second read of the manifests (Shar's must stream)
        repeats = Repeats.of_cuts(kept, dev_ids)
        repeats.log("the training manifests")
        _warn_of_dev_cuts_in_training(repeats.shared, len(dev_ids), "data.train_cuts")
        kept = repeats.rename(kept)
    return kept


def _warn_of_dev_cuts_in_training(shared: Sequence[str], num_dev: int, field: str) -> None:
    """Warns that the dev cuts of the ids ``shared`` (of ``num_dev``) are training cuts too, as
    they are or as speed copies (``<id>_sp0.9``), after the training filters:
    the dev loss and WER, which choose checkpoints, are then not measured on held-out data
    (a dev manifest listed in the training data's ``field``, ``data.train_cuts`` or
    ``data.train_shar_dirs``, or a corpus whose parts share ids)."""
    if shared:
        logger.warning("%d of the %d dev cuts are training cuts too, by their id or as speed "
                       "copies <id>_sp<factor> (e.g. %s): the dev loss and WER are not measured "
                       "on held-out data; check %s and data.dev_cuts", len(shared), num_dev,
                       shared[0], field)


def _load_shar(cfg: ExperimentConfig, model: ASRModel, tokenizer: Tokenizer,
               dev_ids: frozenset[str] = frozenset()):
    """Training cuts from ``data.train_shar_dirs``: (lazy filtered cuts, filtered SharCuts).
    Counting, filtering, the bucket estimate, the loaders' sample rate and feature checks and
    finding repeated ids read the cut manifests only, never the tar data; the filter applies to
    both views of the SharCuts (:meth:`asr.data.shar.SharCuts.filter`), so the checks and the
    buckets see the cuts that training does, as with manifests (:func:`_load_filtered`); repeats
    are renamed as the cuts stream; training cuts of the ids ``dev_ids`` are warned of
    (:func:`_warn_of_dev_cuts_in_training`)."""
    data = cfg.data
    field = "recording" if data.on_the_fly_feats else "features"
    shar = SharCuts(data.train_shar_dirs, field, shuffle=data.shuffle, seed=data.seed)
    dirs = [str(d) for d in data.train_shar_dirs]
    # the cuts training keeps, as the manifests' check counts them, counted in the filter's
    # own pass over the shards' manifests: a second pass would parse and judge each cut again
    counter = RepeatCounter(dev_ids)
    kept = _filter_or_fail(cfg, model, shar.manifests, tokenizer, str(dirs), "training",
                           shar, train=True, on_kept=counter.add_cut)
    logger.info("training from %d Lhotse Shar shards in %s", shar.num_shards, dirs)
    repeats = counter.repeats()
    repeats.log(f"the training shards {dirs}")
    _warn_of_dev_cuts_in_training(repeats.shared, len(dev_ids), "data.train_shar_dirs")
    return repeats.rename(kept.cuts), kept


def check_data_inputs(cfg: ExperimentConfig) -> None:
    """Checks the data files the config names, before a run writes anything: the training
    manifests (``data.train_cuts`` in ``data.manifest_dir``, or the Shar directories
    ``data.train_shar_dirs`` with their cut manifests, :func:`asr.data.shar.shar_fields`) and
    the noise cuts of noise augmentation (``data.noise.cuts_path``, when set) exist, and each
    manifest's first line is a cut and its name says whether it is gzip-compressed
    (:func:`asr.data.dataset.check_cut_manifest`); the noise manifest must hold a cut (noise is
    drawn from it). The dev manifests are checked so by :func:`check_dev_cuts`, as it loads
    them (their errors naming ``data.dev_cuts`` too).

    Raises:
        FileNotFoundError: naming the config field and the missing path (``asr train`` exits
            with 2).
        ValueError: naming the field and a manifest that lhotse cannot read, or a Shar
            directory whose shards do not match.
    """
    data = cfg.data
    if data.train_shar_dirs:
        for shar_dir in data.train_shar_dirs:
            with _naming_field("data.train_shar_dirs", shar_dir):
                shar_fields(shar_dir)
    else:
        _check_manifests(data.manifest_dir, data.train_cuts, "data.train_cuts",
                         "data.manifest_dir")
    noise = data.noise.cuts_path
    if noise is not None:  # read once: its first line is a cut, so it holds one
        _check_manifests(Path(noise).parent, [Path(noise).name], "data.noise.cuts_path",
                         "data.noise.cuts_path", allow_empty=False, given=noise)


def _check_manifests(manifest_dir: Path, names: Sequence[str], field: str, dir_field: str,
                     allow_empty: bool = True, given: str | Path | None = None) -> None:
    """The manifests ``names`` in ``manifest_dir`` checked as they will be loaded
    (:func:`asr.data.dataset.checked_manifests`: they exist, their first lines are cuts, and
    unless ``allow_empty`` there is one), the error naming ``field`` (and, for a relative path
    not found here, ``dir_field``, the field that gives it: ``given``, the path as the config
    gives it, default ``manifest_dir``; a field that names the file itself gives its path, whose
    directory may be ``.``, always there); no names: nothing to check here."""
    if not names:
        return
    with _naming_field(field, manifest_dir if given is None else given, dir_field):
        checked_manifests(manifest_dir, names, allow_empty=allow_empty)


@contextlib.contextmanager
def _naming_field(field: str, path: str | Path | None = None,
                  path_field: str | None = None) -> Iterator[None]:
    """Re-raises the block's FileNotFoundError or ValueError (a DuplicateIdError as one) with
    the config field ``field`` before its message; a FileNotFoundError for the config's
    ``path`` (of ``path_field``, default ``field``) with where a relative one was looked for
    (:func:`asr.config.config_path_hint`)."""
    try:
        yield
    except FileNotFoundError as err:
        hint = "" if path is None else config_path_hint(path_field or field, path)
        raise FileNotFoundError(f"{field}: {err}{hint}") from None
    except DuplicateIdError as err:
        raise DuplicateIdError(f"{field}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{field}: {err}") from None


def check_dev_cuts(cfg: ExperimentConfig) -> CutSet:
    """The dev cuts (``data.dev_cuts`` in ``data.manifest_dir``), checked as manifests
    (:func:`asr.data.dataset.checked_manifests`: they exist, their first lines are cuts, their
    names tell gzip) and to name each cut once, before a run writes anything
    (:func:`asr.data.cut_ids.load_eval_cuts`: a first-line check and one full read); pass them
    on to :func:`train_experiment`, which then reads no dev manifest again. ``asr train`` runs it
    after :func:`check_data_inputs`, both after ``--check-only``'s stop (the recipes check their
    config before their data stages, when a dev manifest of an earlier run may be stale).

    Returns:
        The dev cuts, eager and unfiltered.

    Raises:
        asr.data.cut_ids.DuplicateIdError: naming a repeated id, its file(s) and both lines.
        FileNotFoundError / ValueError: as ``load_eval_cuts``: a missing dev manifest, or one
            that is no cut manifest.

    Every message begins with the field, ``data.dev_cuts:``.
    """
    with _naming_field("data.dev_cuts", cfg.data.manifest_dir, "data.manifest_dir"):
        return load_eval_cuts(cfg.data.manifest_dir, cfg.data.dev_cuts)


def _init_input_norm(model: ASRModel, cfg: ExperimentConfig, train_cuts) -> None:
    """Sets a fresh model's global CMVN from the training features (resumed runs have theirs)."""
    norm = model.encoder.input_norm
    if norm is None:
        return
    extractor = make_lhotse_fbank(cfg.data.fbank) if cfg.data.on_the_fly_feats else None
    mean, std = compute_cmvn_stats(train_cuts, extractor=extractor)
    norm.set_stats(mean, std)


def check_training_config(cfg: ExperimentConfig) -> None:
    """Checks what only training needs of ``cfg``, before any data is read or model built: the
    transducer loss' backend must run here (``backend: k2`` needs k2,
    :meth:`asr.heads.transducer.TransducerConfig.check_backend`) and a plain RNN-T loss must
    not be given TDT settings it would ignore
    (:meth:`asr.heads.transducer.TransducerConfig.check_tdt_fields`), the heads must be trainable
    together (:meth:`asr.model.HeadsConfig.check_training`) and SpecAugment's masks must be able
    to mask (:meth:`asr.data.config.SpecAugmentConfig.check_masks`).

    Raises:
        asr.config.ConfigError: naming the field (``asr train`` exits with 2).
    """
    if cfg.heads.transducer is not None:
        try:
            cfg.heads.transducer.check_backend()
            cfg.heads.transducer.check_tdt_fields()
        except ValueError as err:
            raise ConfigError(f"heads.transducer.{err}") from None
    try:
        cfg.heads.check_training()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.data.spec_augment.enabled:
        try:
            cfg.data.spec_augment.check_masks()
        except ValueError as err:
            raise ConfigError(str(err)) from None


def train_experiment(
    cfg: ExperimentConfig,
    exp_dir: str | Path,
    dist: DistInfo | None = None,
    dev_cuts: CutSet | None = None,
) -> Progress:
    """Trains ``cfg`` into ``exp_dir`` (resuming from its newest checkpoint); returns the progress.

    Args:
        cfg: the resolved experiment configuration.
        exp_dir: experiment directory (checkpoints, TensorBoard logs, ``train.log``,
            ``training.png``).
        dist: process placement; by default set up from the ``torchrun`` environment.
        dev_cuts: the dev cuts as :func:`check_dev_cuts` returns them (not read again); by
            default loaded from ``data.dev_cuts``.

    Raises:
        asr.config.ConfigError: from :func:`check_training_config`, before anything is built.
    """
    check_training_config(cfg)
    own_dist = dist is None
    dist = dist or setup_distributed(cfg.train.device)
    try:
        seed_everything(cfg.train.seed + dist.rank)
        try:
            tokenizer = load_tokenizer(cfg.tokenizer_dir)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"tokenizer_dir: {err}{config_path_hint('tokenizer_dir', cfg.tokenizer_dir)}"
            ) from None
        pieces = tokenizer.pieces()
        model = build_model(cfg, tokenizer.vocab_size)
        if dist.is_main:
            num_params = sum(p.numel() for p in model.parameters())
            logger.info("model: %.2fM parameters, vocab size %d, heads %s", num_params / 1e6,
                        tokenizer.vocab_size, list(cfg.heads.enabled()))
        dev_cuts = _load_filtered(cfg, model, cfg.data.dev_cuts, tokenizer, "dev",
                                  cuts=dev_cuts)
        dev_ids = frozenset(cut.id for cut in dev_cuts)
        shar = None
        if cfg.data.train_shar_dirs:
            train_cuts, shar = _load_shar(cfg, model, tokenizer, dev_ids)
        else:
            train_cuts = _load_filtered(cfg, model, cfg.data.train_cuts, tokenizer, "training",
                                        train=True, dev_ids=dev_ids)

        def valid_batches():
            return make_dataloader(dev_cuts, cfg.data, tokenizer, train=False, rank=dist.rank,
                                   world_size=dist.world_size)

        trainer = Trainer(
            model, cfg.optim, cfg.train, exp_dir,
            train_batches=EpochBatches(train_cuts, cfg.data, tokenizer, dist.rank, dist.world_size,
                                       shar),
            valid_batches=valid_batches,
            evaluate=(DevWer(dev_cuts, cfg, tokenizer, dist.device,
                             cfg.train.dev_wer_max_utterances, dist)
                      if cfg.train.dev_wer else None),
            dist=dist,
            extra_state={"config": to_dict(cfg), "tokens": pieces},
            check_resume=lambda extra: check_vocabulary(extra.get("tokens"), tokenizer,
                                                         cfg.tokenizer_dir),
            # the audio of a global batch, for a schedule counted in audio (optim's module doc)
            schedule_scale=cfg.optim.step_scale(
                cfg.data.max_duration * dist.world_size * cfg.train.accum_grad),
        )
        if not trainer.resume():
            _init_input_norm(model, cfg, train_cuts)
        progress = trainer.fit()
        logger.info("training stopped at step %d (%d epochs done)", progress.step,
                    len(progress.history))
        return progress
    finally:
        if own_dist:
            cleanup_distributed()
