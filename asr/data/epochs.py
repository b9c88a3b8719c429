"""Training batches epoch by epoch, resumable mid-epoch: the trainer's ``train_batches``.

:class:`EpochBatches` is ``(epoch, skip, skip_world_size) -> batches`` for one rank. Each epoch
re-seeds the sampler's shuffle (``set_epoch``), the dataset's epoch (SpecAugment's
``start_epoch``, and every augmentation draw: the speed factors from ``(seed, epoch, cut id)``,
noise, frequency warp, SpecAugment and dither from ``(seed, epoch, the batch's or the utterance's
cut ids)``, see :mod:`asr.data.dataset`) and the Shar shard order, so that an epoch's batches do
not depend on what ran before it, nor on ``num_workers``. Exact resumption: a resumed epoch
re-creates the sampler and skips the ``skip`` batches already trained on without loading their
features; the batches after them are the uninterrupted run's, augmentation included.

Resuming with another number of processes: ``skip`` counts GLOBAL batches (all ranks together)
of the epoch's stream as ``skip_world_size`` processes sampled it (the stream depends on it:
:mod:`asr.data.sampler`). With ``skip_world_size`` processes and ``skip`` a multiple of it,
each rank skips ``skip / skip_world_size`` of its own batches; otherwise each rank replays that
stream (:func:`asr.data.sampler.stream_rounds`: one sampler of ``skip_world_size`` ranks, over
the epoch's cuts) and takes its share of the rest (:func:`asr.data.sampler.resumed_share`): the
cuts that the ``skip_world_size`` processes would still have trained on, each once (their
stream's last round by the parts those ranks split it into, less the split's repeats: each
batch is one position of that stream, also for a run resumed again), the batches that fill no
round of the new ranks split among them as lhotse splits a last round.

The count of batches to skip is a position in the epoch's stream as this sampler draws it:
:attr:`EpochBatches.stream` names it (:func:`asr.data.sampler.sampler_stream`), the trainer
records it in each checkpoint, and an epoch resumed with a sampler of another stream is trained
again from its start (:class:`asr.train.trainer.Trainer`), unless the checkpoint knows its
position to be the end of the recorded stream (``Progress.epoch_batches``). A checkpoint
written before the stream was recorded is taken to be in :attr:`EpochBatches.unrecorded_stream`:
the stream of those versions, which sampled cuts among which the bucket estimate finds no
boundary (a tiny corpus) with lhotse's bucketing sampler and no boundary, where this version
samples one bucket.

What an epoch leaves out (lhotse's sampler with ``data.drop_last``, as in icefall): the cuts left
in every duration bucket that no longer fill a batch (at most about ``num_buckets * max_duration``
seconds), and with N ranks up to N - 1 more batches, so that every rank yields as many batches.
An epoch resumed with another number of processes trains what the interrupted run would still
have trained, but for fewer cuts than its ranks at the very end, which ``drop_last`` leaves out
where the split would repeat them. Each rank
logs at the end of an epoch what it trained on (and, alone, how many cuts were left
out), at INFO: under ``torchrun`` the console shows rank 0's line only (``asr.cli.main``,
``console_logging``); an epoch that gives no batch at all (a corpus smaller than its
buckets' batches) is an error, not a silent empty epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from asr.data.config import DataConfig
from asr.data.dataset import make_dataloader
from asr.data.filtering import TextEncoder
from asr.data.sampler import (
    ONE_BUCKET,
    bucket_stream,
    resumed_share,
    sampler_stream,
    stream_rounds,
)
from asr.data.shar import SharCuts
from asr.types import Batch

logger = logging.getLogger(__name__)

__all__ = ["EpochBatches"]


class _SkipFirst:
    """Iterable over a sampler's CutSets without the first ``skip``."""

    def __init__(self, sampler, skip: int) -> None:
        self.sampler = sampler
        self.skip = skip

    def __iter__(self):
        # next() rather than islice: iter() on a lhotse sampler restarts its epoch.
        it = iter(self.sampler)
        for _ in range(self.skip):
            if next(it, None) is None:
                break
        return it


class _ResumedShare:
    """Iterable over one rank's share of an epoch's global stream, as ``stream_world_size``
    processes sample it, after its first ``skip`` batches
    (:func:`asr.data.sampler.resumed_share`)."""

    def __init__(self, sampler, skip: int, stream_world_size: int, rank: int,
                 world_size: int) -> None:
        self.sampler = sampler
        self.skip = skip
        self.stream_world_size = stream_world_size
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        rounds = stream_rounds(self.sampler, self.stream_world_size)
        return resumed_share(rounds, self.stream_world_size, self.skip, self.rank,
                             self.world_size, self.sampler.drop_last)


def _unrecorded_stream(stream: str, num_buckets: int, num_cuts: int | None) -> str:
    """The stream that versions before checkpoints recorded it sampled where this one samples
    ``stream``: lhotse's bucketing sampler with no boundary (``bucket_stream([])``)
    for one bucket chosen because the estimate found no boundary among two cuts or more of
    ``num_buckets > 1`` (``num_cuts``: None, unknown); ``stream`` itself otherwise."""
    if stream == ONE_BUCKET and num_buckets > 1 and (num_cuts is None or num_cuts > 1):
        return bucket_stream([])
    return stream


class EpochBatches:
    """``(epoch, skip, skip_world_size) -> batches`` of one rank, the trainer's ``train_batches``.

    ``skip``: the epoch's global batches already trained on (all ranks together) in its stream
    as ``skip_world_size`` processes (default: this run's) sample it; see the module docstring.

    Args:
        cuts: the (filtered) training CutSet.
        cfg: the data configuration.
        tokenizer: text -> token ids.
        rank: this process' rank.
        world_size: the number of processes.
        shar: the :class:`asr.data.shar.SharCuts` that ``cuts`` read from, if any (filtered
            as ``cuts`` are: :meth:`asr.data.shar.SharCuts.filter`): its shard order is set per
            epoch and its manifests (no data) are what the loader checks (sample rate, stored
            features) and estimates the duration buckets from.
    """

    def __init__(self, cuts, cfg: DataConfig, tokenizer: TextEncoder, rank: int = 0,
                 world_size: int = 1, shar: SharCuts | None = None) -> None:
        self.cfg = cfg
        self.shar = shar
        self.loader = make_dataloader(cuts, cfg, tokenizer, train=True, rank=rank,
                                      world_size=world_size,
                                      bucket_cuts=shar.manifests if shar is not None else None)
        self.rank = rank
        self.world_size = world_size
        #: whether an epoch sampled for ``world_size`` processes drops its last round where
        #: they do not fill it (``data.drop_last``): the trainer's step count
        #: (:func:`asr.train.budget.epoch_steps`) follows it
        self.drop_last = cfg.drop_last
        # the count of training cuts, for the log of what an epoch left out (a lazy CutSet,
        # e.g. Shar, has none without reading it)
        self.num_cuts = None if getattr(cuts, "is_lazy", True) else len(cuts)
        #: the epoch's batch stream (:func:`asr.data.sampler.sampler_stream`), and what
        #: versions that recorded none in their checkpoints sampled (module docstring)
        self.stream = sampler_stream(self.loader.sampler)
        self.unrecorded_stream = _unrecorded_stream(self.stream, cfg.num_buckets, self.num_cuts)

    def __call__(self, epoch: int, skip: int, skip_world_size: int | None = None
                 ) -> Iterator[Batch]:
        if skip < 0 or (skip_world_size is not None and skip_world_size < 1):
            raise ValueError(f"need skip >= 0 and skip_world_size >= 1, got skip={skip} "
                             f"skip_world_size={skip_world_size}")
        stream_world_size = self.world_size if skip_world_size is None else skip_world_size
        loader = self.loader
        loader.sampler.set_epoch(epoch)
        if self.shar is not None:
            self.shar.set_epoch(epoch)
        dataset = loader.dataset
        dataset.set_epoch(epoch)
        if stream_world_size == self.world_size and skip % self.world_size == 0:
            sampler = _SkipFirst(loader.sampler, skip // self.world_size)
        else:
            logger.info("epoch %d resumed on %d processes after %d batches of its stream for %d: "
                        "rank %d takes its share of the rest", epoch, self.world_size, skip,
                        stream_world_size, self.rank)
            sampler = _ResumedShare(loader.sampler, skip, stream_world_size, self.rank,
                                    self.world_size)
        epoch_loader = torch.utils.data.DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.cfg.num_workers,
            persistent_workers=False,
            # The loader draws its workers' base seed from this generator, not from the global
            # RNG, so a resumed epoch leaves the global stream (dropout...) where it was.
            generator=torch.Generator().manual_seed(self.cfg.seed + epoch),
        )
        batches = cuts = 0
        seconds = 0.0
        for batch in epoch_loader:
            batches += 1
            cuts += len(batch.cut_ids)
            seconds += float(batch.feat_lens.sum()) * self.cfg.fbank.frame_shift
            yield batch
        if skip == 0 and batches == 0:
            raise ValueError(
                f"epoch {epoch} gave no training batch on rank {self.rank}: with "
                f"data.drop_last=true every duration bucket must fill a batch of "
                f"data.max_duration={self.cfg.max_duration} s, and the training cuts fill none; "
                "lower data.max_duration or data.num_buckets, or set data.drop_last=false"
            )
        left_out = ""
        if self.world_size == 1 and skip == 0 and self.num_cuts is not None:
            left_out = f"; {self.num_cuts - cuts} of {self.num_cuts} cuts left out"
        logger.info("epoch %d, rank %d: %d batches (%d global batches skipped at resumption), "
                    "%d cuts, %.1f s%s",
                    epoch, self.rank, batches, skip, cuts, seconds, left_out)
