"""Training one :class:`asr.experiment.ExperimentConfig`: the function behind ``asr train``.

:func:`train_experiment` wires the library together: tokenizer, model, training / dev data (with
utterances that have more tokens than encoder frames filtered out), the :class:`Trainer` (resumed
from the newest ``checkpoint-N.pt`` of the experiment directory) and an end-of-epoch dev WER with
the greedy searcher of the first head that has one (once :mod:`asr.decoding` provides searchers).

Launch with ``torchrun --nproc-per-node N -m asr.cli.main train ...`` for DDP: every rank reads
the same shuffled cut stream and keeps every N-th batch (see :mod:`asr.data.sampler`).

Exact resumption: the trainer checkpoints the number of batches consumed in the epoch; on resume
:class:`EpochBatches` re-creates the epoch's sampler and skips that many batches without loading
their features (with ``data.num_workers == 0`` the cut transforms still see the skipped cuts, so
their random generator is exactly where the interrupted run left it).
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from asr.config import to_dict
from asr.experiment import ExperimentConfig, build_model
from asr.train.distributed import DistInfo, cleanup_distributed, setup_distributed
from asr.train.state import Progress
from asr.types import Batch

logger = logging.getLogger(__name__)

__all__ = ["EpochBatches", "DevWer", "seed_everything", "train_experiment"]


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _SkipFirst:
    """Iterable over a sampler's CutSets without the first ``skip`` (passed to ``transforms``)."""

    def __init__(self, sampler, skip: int, transforms=()) -> None:
        self.sampler = sampler
        self.skip = skip
        self.transforms = list(transforms)

    def __iter__(self):
        it = iter(self.sampler)
        for cuts in itertools.islice(it, self.skip):
            for transform in self.transforms:  # advance the augmentation RNG as if loaded
                transform(cuts)
        return it


class EpochBatches:
    """``(epoch, skip) -> batches`` of one rank, the trainer's ``train_batches`` callable.

    Args:
        cuts: the (filtered) training CutSet.
        cfg: the experiment configuration (``cfg.data`` is used).
        tokenizer: text -> token ids.
        dist: this process' rank and world size.
        shar: the :class:`asr.data.shar.SharCuts` that ``cuts`` read from, if any: its shard
            order is set per epoch and its manifests (no data) give the duration buckets.
    """

    def __init__(self, cuts, cfg: ExperimentConfig, tokenizer, dist: DistInfo, shar=None) -> None:
        from asr.data.dataset import make_dataloader

        self.cfg = cfg.data
        self.shar = shar
        self.loader = make_dataloader(cuts, cfg.data, tokenizer, train=True, rank=dist.rank,
                                      world_size=dist.world_size,
                                      bucket_cuts=shar.manifests if shar is not None else None)
        self.rank = dist.rank

    def __call__(self, epoch: int, skip: int) -> Iterator[Batch]:
        loader = self.loader
        loader.sampler.set_epoch(epoch)
        if self.shar is not None:
            self.shar.set_epoch(epoch)
        dataset = loader.dataset
        dataset.set_epoch(epoch)
        # The augmentation RNGs of epoch e are a function of (seed, rank, e) only.
        seed = self.cfg.seed + 1000 * self.rank + 100_003 * epoch
        worker_init_fn = loader.worker_init_fn
        if isinstance(worker_init_fn, functools.partial):  # asr.data.dataset's seeding
            worker_init_fn = functools.partial(worker_init_fn.func, base_seed=seed)
        if self.cfg.num_workers == 0:
            dataset.reseed(seed, python_random=False)
        transforms = dataset.cut_transforms if self.cfg.num_workers == 0 else ()
        epoch_loader = torch.utils.data.DataLoader(
            dataset,
            sampler=_SkipFirst(loader.sampler, skip, transforms),
            batch_size=None,
            num_workers=self.cfg.num_workers,
            worker_init_fn=worker_init_fn,
            persistent_workers=False,
            # The loader draws its workers' base seed from this generator, not from the global
            # RNG, so a resumed epoch leaves the global stream (dropout...) where it was.
            generator=torch.Generator().manual_seed(self.cfg.seed + epoch),
        )
        yield from epoch_loader


class DevWer:
    """``(model) -> dev WER %`` with a greedy searcher; None when no searcher is available.

    Args:
        cuts: dev CutSet.
        cfg: experiment configuration.
        tokenizer: ids -> text.
        device: where to decode.
        max_utterances: decode at most this many dev cuts (0: all).
    """

    def __init__(self, cuts, cfg: ExperimentConfig, tokenizer, device: torch.device,
                 max_utterances: int = 0) -> None:
        from asr.train.evaluate import greedy_searcher_name

        self.cuts = cuts.subset(first=max_utterances) if max_utterances > 0 else cuts
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.device = device
        self.searcher_name = greedy_searcher_name(cfg.heads)
        self._warned = False

    def _build_searcher(self, model):
        try:
            from asr.decoding import SearchConfig, build_searcher
        except ImportError:
            if not self._warned:
                logger.warning("asr.decoding has no searchers yet: no dev WER during training")
                self._warned = True
            return None
        return build_searcher(self.searcher_name, model, SearchConfig())

    def __call__(self, model) -> float | None:
        if self.searcher_name is None:
            return None
        was_training = model.training
        model.eval()
        try:
            searcher = self._build_searcher(model)
            if searcher is None:
                return None
            return self._decode(model, searcher)
        except Exception:  # an auxiliary metric must never cost the training run
            logger.exception("dev WER evaluation with %s failed; training goes on without it",
                             self.searcher_name)
            return None
        finally:
            model.train(was_training)

    def _decode(self, model, searcher) -> float:
        from asr.data.dataset import make_dataloader
        from asr.train.evaluate import recognize, score_recognitions

        loader = make_dataloader(self.cuts, self.cfg.data, self.tokenizer, train=False, rank=0,
                                 world_size=1)
        recognitions, seconds = recognize(model, searcher, loader, self.tokenizer, self.device,
                                          progress=False)
        wer = 100.0 * score_recognitions(recognitions).stats.wer
        logger.info("dev WER %.2f%% (%s, %d utterances, %.1f s)", wer, self.searcher_name,
                    len(recognitions), seconds)
        return wer


def _filter_or_fail(cfg: ExperimentConfig, cuts, tokenizer, where: str, what: str, apply_to=None):
    """``filter_cuts`` with the data config's limits; an error naming ``where`` if none is left."""
    from asr.data.filtering import filter_cuts

    kept, stats = filter_cuts(
        cuts, tokenizer, min_duration=cfg.data.min_cut_duration,
        max_duration=cfg.data.max_cut_duration, frame_shift=cfg.data.fbank.frame_shift,
        apply_to=apply_to,
    )
    if stats.kept == 0:
        raise ValueError(f"no {what} cuts left in {where} after filtering ({stats})")
    return kept


def _load_filtered(cfg: ExperimentConfig, names, tokenizer, what: str):
    from asr.data.dataset import load_cuts

    cuts = load_cuts(cfg.data.manifest_dir, names)
    where = f"{cfg.data.manifest_dir}/{list(names)}"
    return _filter_or_fail(cfg, cuts, tokenizer, where, what).to_eager()


def _load_shar(cfg: ExperimentConfig, tokenizer):
    """Training cuts from ``data.train_shar_dirs``: (lazy filtered cuts, SharCuts). Counting,
    filtering and the bucket estimate read the cut manifests only, never the tar data."""
    from asr.data.shar import SharCuts

    data = cfg.data
    field = "recording" if data.on_the_fly_feats else "features"
    shar = SharCuts(data.train_shar_dirs, field, shuffle=data.shuffle, seed=data.seed)
    dirs = [str(d) for d in data.train_shar_dirs]
    kept = _filter_or_fail(cfg, shar.manifests, tokenizer, str(dirs), "training", shar.cuts)
    logger.info("training from %d Lhotse Shar shards in %s", shar.num_shards, dirs)
    return kept, shar


def _init_input_norm(model, cfg: ExperimentConfig, train_cuts) -> None:
    """Sets a fresh model's global CMVN from the training features (resumed runs have theirs)."""
    norm = getattr(model.encoder, "input_norm", None)
    if norm is None:
        return
    from asr.features.cmvn import compute_cmvn_stats
    from asr.features.fbank import make_lhotse_fbank

    extractor = make_lhotse_fbank(cfg.data.fbank) if cfg.data.on_the_fly_feats else None
    mean, std = compute_cmvn_stats(train_cuts, extractor=extractor)
    norm.set_stats(mean, std)


def train_experiment(
    cfg: ExperimentConfig,
    exp_dir: str | Path,
    dist: DistInfo | None = None,
) -> Progress:
    """Trains ``cfg`` into ``exp_dir`` (resuming from its newest checkpoint); returns the progress.

    Args:
        cfg: the resolved experiment configuration.
        exp_dir: experiment directory (checkpoints, TensorBoard logs, ``training.png``).
        dist: process placement; by default set up from the ``torchrun`` environment.
    """
    from asr.tokenizers import load_tokenizer
    from asr.train.trainer import Trainer

    own_dist = dist is None
    dist = dist or setup_distributed(cfg.train.device)
    try:
        seed_everything(cfg.train.seed + dist.rank)
        tokenizer = load_tokenizer(cfg.tokenizer_dir)
        model = build_model(cfg, tokenizer.vocab_size)
        if dist.is_main:
            num_params = sum(p.numel() for p in model.parameters())
            logger.info("model: %.2fM parameters, vocab size %d, heads %s", num_params / 1e6,
                        tokenizer.vocab_size, list(cfg.heads.enabled()))
        shar = None
        if cfg.data.train_shar_dirs:
            train_cuts, shar = _load_shar(cfg, tokenizer)
        else:
            train_cuts = _load_filtered(cfg, cfg.data.train_cuts, tokenizer, "training")
        dev_cuts = _load_filtered(cfg, cfg.data.dev_cuts, tokenizer, "dev")

        def valid_batches():
            from asr.data.dataset import make_dataloader

            return make_dataloader(dev_cuts, cfg.data, tokenizer, train=False, rank=dist.rank,
                                   world_size=dist.world_size)

        trainer = Trainer(
            model, cfg.optim, cfg.train, exp_dir,
            train_batches=EpochBatches(train_cuts, cfg, tokenizer, dist, shar),
            valid_batches=valid_batches,
            evaluate=(DevWer(dev_cuts, cfg, tokenizer, dist.device, cfg.train.dev_wer_max_utterances)
                      if cfg.train.dev_wer else None),
            dist=dist,
            extra_state={"config": to_dict(cfg)},
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
