"""Duration-bucketed, DDP-aware batch sampling (lhotse ``DynamicBucketingSampler``).

Cuts are streamed, assigned to ``num_buckets`` duration buckets estimated from the data, and
batches are filled from one bucket up to ``max_duration`` seconds, so utterances of similar length
are batched together and padding stays small (the dynamic-bucketing idea of lhotse, Żelasko et al.,
"Lhotse: a speech data representation library for the modern deep learning ecosystem", 2021).

Distributed training: every rank iterates the same (identically shuffled, seeded) stream and keeps
every ``world_size``-th batch starting at ``rank``, so ranks yield as many batches each (a DDP
step needs every rank) and never share a cut; together they cover the data, less what
``drop_last`` leaves out (see :mod:`asr.data.epochs`). Training without ``drop_last`` keeps
lhotse's end of an epoch: it splits the last batches among the ranks, repeating a cut (id
suffixed ``_dup<k>``) when fewer cuts than ranks are left, and such a split batch may mix cuts of
different buckets.

Distributed evaluation (the validation loss, summed per rank and reduced once) needs no equal
batch counts, but every cut exactly once: each rank samples, alone, its own share of the cuts
(those at positions ``rank``, ``rank + world_size``, ...), so no cut is repeated or left out and
every batch keeps the ``max_duration`` bound below; ranks may yield different numbers of
batches (one with no cut, none). ``rank``/``world_size`` default to ``torch.distributed`` when it
is initialised.

``max_duration``: lhotse closes a batch once one more cut as long as its longest would exceed
it, so a batch can pass it by up to the difference between its last cut and the longest one
before it; with duration buckets (cuts of similar length) that is small (none of the batches of
a LibriSpeech-like duration mix at 200 s and 30 buckets did). The padded size of a batch (its
cuts times its longest) is not bounded by ``max_duration``; no batch is empty.

The epoch's global batch stream (every rank's batches, round by round: rank 0's, rank 1's...)
depends on the number of ranks: lhotse's bucketing sampler draws one duration bucket per round
of ``world_size`` batches, so that the ranks of a step get cuts of similar length.
:func:`stream_rounds` replays the stream of any world size (its last round as lhotse draws it,
before :func:`split_round` splits it among the ranks); :func:`resumed_share` gives one rank of
another world size its share of the cuts that stream holds after a position.

Resuming: the trainer does not use lhotse's sampler state (which, with DataLoader workers, counts
the prefetched batches as yielded). :class:`asr.data.epochs.EpochBatches` re-seeds the sampler
for the epoch and skips the number of global batches the checkpoint says were trained on,
counted in the training loop, so a resumed epoch neither repeats nor skips a batch with any
``num_workers`` nor with another number of processes. That count is a position in one stream:
the checkpoint records which (:func:`sampler_stream`), and an epoch resumed with a sampler of
another (other duration buckets, or one bucket where there were several) is trained again from
its start instead.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Iterator, Sequence

from asr.data.config import DataConfig

logger = logging.getLogger(__name__)

__all__ = [
    "ONE_BUCKET", "bucket_stream", "lazy_view", "make_sampler",
    "resolve_rank_world_size", "resumed_share", "sampler_stream", "split_round", "stream_rounds",
]

#: :func:`sampler_stream` of a sampler without duration buckets (``DynamicCutSampler``).
ONE_BUCKET = "one bucket"


def resolve_rank_world_size(
    rank: int | None = None, world_size: int | None = None
) -> tuple[int, int]:
    """Returns explicit values, else ``torch.distributed``'s when initialised, else (0, 1).

    Raises:
        ValueError: when ``rank`` is not in ``[0, world_size)``.
    """
    import torch.distributed as dist

    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    return rank, world_size


def lazy_view(cuts):
    """An eager (in-memory) CutSet seen as a lazy one: the same cuts in the same order.

    lhotse's dynamic samplers only ever iterate their cuts (shuffling, bucketing and resuming
    work on that stream alike for both kinds), but warn on every run that an eager CutSet brings
    no memory benefit. Training and test cuts are held in memory here on purpose (filtered and
    counted once), so the samplers get this view: identical batches, no warning. Anything else
    is returned as it is.
    """
    from lhotse import CutSet
    from lhotse.lazy import LazyIteratorChain

    if isinstance(cuts, CutSet) and not cuts.is_lazy:
        return CutSet(LazyIteratorChain(cuts))
    return cuts


class _RankShare:
    """A lazy lhotse source: the cuts of ``cuts`` at positions ``rank``, ``rank + world_size``,
    ... (one rank's share of an evaluation set), read anew on each iteration."""

    def __init__(self, cuts, rank: int, world_size: int) -> None:
        self.cuts = cuts
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator:
        return itertools.islice(self.cuts, self.rank, None, self.world_size)


def make_sampler(
    cuts,
    cfg: DataConfig,
    train: bool,
    rank: int | None = None,
    world_size: int | None = None,
    bucket_cuts=None,
):
    """Builds a ``DynamicBucketingSampler`` yielding CutSets of at most ``cfg.max_duration`` s.

    Args:
        cuts: a lhotse ``CutSet`` (lazy or eager).
        cfg: data configuration (max_duration, num_buckets, buffer_size, shuffle, drop_last,
            seed).
        train: training sampling (``cfg.shuffle``/``cfg.drop_last``) or evaluation sampling
            (no shuffling, last batch kept; with several ranks, each samples its share of the
            cuts: module docstring).
        rank: this process's rank; see :func:`resolve_rank_world_size`.
        world_size: number of processes.
        bucket_cuts: the same cuts without their data (e.g. Lhotse Shar manifests, see
            :class:`asr.data.shar.SharCuts`) to count and estimate the duration buckets from,
            so that reading data is left to the epochs; default ``cuts``.

    With ``cfg.num_buckets == 1`` (or a single cut, or cuts among which the estimate finds no
    bucket boundary, e.g. two cuts, the longer last) lhotse's ``DynamicCutSampler`` (same
    constraints, no bucketing) is used; a CutSet with fewer cuts than buckets gets one bucket
    per cut.

    Returns:
        the sampler; iterate it (or pass it as a DataLoader ``sampler`` with ``batch_size=None``).
    """
    from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler
    from lhotse.dataset.sampling.base import TimeConstraint
    from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets

    cuts = lazy_view(cuts)
    rank, world_size = resolve_rank_world_size(rank, world_size)
    num_buckets = cfg.num_buckets
    bucket_cuts = cuts if bucket_cuts is None else bucket_cuts  # all of them, on every rank
    if not train and world_size > 1:
        from lhotse import CutSet

        logger.debug("evaluation sampler: the share of rank %d of %d", rank, world_size)
        cuts = CutSet(_RankShare(cuts, rank, world_size))
        rank, world_size = 0, 1  # lhotse's own split would repeat and merge cuts at the end
    # lhotse needs at least one cut per bucket to estimate the bucket boundaries; peeking at
    # the first num_buckets cuts is cheap even for a lazy CutSet.
    num_cuts = sum(1 for _ in itertools.islice(bucket_cuts, num_buckets))
    if num_cuts < num_buckets:
        logger.info("only %d cuts: using %d buckets instead of %d", num_cuts, num_cuts, num_buckets)
        num_buckets = num_cuts
    common = dict(
        max_duration=cfg.max_duration,
        shuffle=cfg.shuffle if train else False,
        drop_last=cfg.drop_last if train else False,
        rank=rank,
        world_size=world_size,
        seed=cfg.seed,
    )
    logger.debug("sampler: rank %d of %d, train=%s, %d buckets",
                 rank, world_size, train, num_buckets)
    duration_bins = []
    if num_buckets > 1:
        # lhotse's own estimate (the first 10000 cuts), made here from ``bucket_cuts``
        duration_bins = estimate_duration_buckets(
            itertools.islice(bucket_cuts, 10000),
            num_buckets=num_buckets,
            constraint=TimeConstraint(max_duration=cfg.max_duration),
        )
    if not duration_bins:
        # one bucket: a few cuts (e.g. a small dev set: two cuts, the longer last) may give the
        # estimate no boundary, and lhotse's bucketing sampler then averages the empty list of
        # boundaries (numpy's "Mean of empty slice" RuntimeWarning) to sample one bucket
        if num_buckets > 1:
            logger.debug("no duration bucket boundary among these cuts: one bucket")
        return DynamicCutSampler(cuts, shuffle_buffer_size=cfg.buffer_size, **common)
    return DynamicBucketingSampler(cuts, duration_bins=duration_bins, buffer_size=cfg.buffer_size,
                                   **common)


def sampler_stream(sampler) -> str:
    """What a training sampler of :func:`make_sampler` samples an epoch's batch stream with:
    its duration buckets (``"duration buckets at [2.5, 7.25] s"``) or :data:`ONE_BUCKET`.
    Samplers of the same cuts, configuration, world size and epoch that name the same stream
    yield the same batches; a count of batches into one stream is no position in another
    (:class:`asr.data.epochs.EpochBatches`)."""
    return bucket_stream(getattr(sampler, "duration_bins", None))


def bucket_stream(duration_bins: Sequence[float] | None) -> str:
    """:func:`sampler_stream` of a sampler with the boundaries ``duration_bins`` (seconds), or
    with no duration buckets (None: :data:`ONE_BUCKET`)."""
    if duration_bins is None:
        return ONE_BUCKET
    return f"duration buckets at [{', '.join(repr(float(b)) for b in duration_bins)}] s"


def _sampler_for_rank(sampler, rank: int, world_size: int):
    """A copy of a training ``sampler`` (:func:`make_sampler`) sampling for ``rank`` of
    ``world_size`` processes: the same cuts, buckets, seed and epoch, its own iteration."""
    from lhotse.dataset.sampling.base import SamplingDiagnostics

    other = copy.copy(sampler)
    # lhotse's samplers pickle through their ``__dict__`` itself (``lhotse.lazy.Dillable``):
    # a plain copy would share it, and with it the iteration
    other.__dict__ = dict(sampler.__dict__)
    other.rank, other.world_size = rank, world_size
    other._diagnostics = SamplingDiagnostics()
    other._transforms = list(sampler._transforms)
    return other


def stream_rounds(sampler, world_size: int) -> Iterator[list]:
    """The current epoch's batches as ``world_size`` processes sample them, round by round.

    Args:
        sampler: a training sampler of :func:`make_sampler` (any rank and world size), its
            epoch set (``set_epoch``).
        world_size: the number of processes whose stream to replay.

    Yields:
        lists of CutSets: each round's batches as lhotse draws them for rank 0, 1, ...,
        ``world_size - 1`` (one sampler draws them all: each rank's draws every batch of a
        round and keeps its own); the last list is shorter where the stream ends inside a round:
        the batches that lhotse then drops (``drop_last``) or splits among the ranks
        (:func:`split_round`).
    """
    replay = iter(_sampler_for_rank(sampler, 0, world_size))
    while True:
        batches = []
        for _ in range(world_size):
            try:
                batches.append(replay._next_batch())  # what lhotse's __next__ draws per rank
            except StopIteration:
                break
        if batches:
            yield batches
        if len(batches) < world_size:
            return


def split_round(batches: Sequence, world_size: int) -> list:
    """The cuts of ``batches`` (fewer than ``world_size``, the end of an epoch's stream) split
    among ``world_size`` ranks as lhotse's samplers split them without ``drop_last``: in
    order, into contiguous parts, the first cuts repeated as ``<id>_dup<k>`` (at the end) when
    fewer cuts than ranks are left."""
    from lhotse.dataset.sampling.base import mark_as_duplicate
    from lhotse.manipulation import combine

    combined = combine(list(batches))
    chunk = 0
    while (missing := world_size - len(combined)) > 0:
        combined = combined + combined.subset(first=missing).modify_ids(mark_as_duplicate(chunk))
        chunk += 1
    return combined.split(world_size)


def _untrained_batches(rounds: Iterator[list], stream_world_size: int, skip: int,
                       drop_last: bool) -> Iterator:
    """The batches of an epoch's stream (``rounds`` of :func:`stream_rounds` for
    ``stream_world_size`` processes) that its first ``skip`` global batches (lhotse's, the
    last round split among those ranks) did not hold, lazily: each full round's batches from
    position ``skip`` on; without ``drop_last`` then the parts of its last, short round as
    those ranks split it (:func:`split_round`) from position ``skip`` on, the split's repeats
    left out. Each batch yielded is one position of the stream, so that a run that trained
    some of them (counting one global batch each) is resumed from its count again exactly."""
    position = 0
    for batches in rounds:
        if len(batches) == stream_world_size:
            for batch in batches:
                if position >= skip:
                    yield batch
                position += 1
            continue
        if drop_last:
            return
        # the parts are the round's cuts in order, then the repeats: one cut each part where
        # there are fewer cuts than ranks, and none otherwise
        cuts = sum(map(len, batches))
        yield from split_round(batches, stream_world_size)[max(0, skip - position):cuts]


def resumed_share(rounds: Iterator[list], stream_world_size: int, skip: int, rank: int,
                  world_size: int, drop_last: bool) -> Iterator:
    """One rank's share of what is left of an epoch's stream after ``skip`` global batches.

    What is left is what the ``stream_world_size`` processes that sampled the stream would
    still have trained on (:func:`_untrained_batches`). Rank ``rank`` of ``world_size`` takes
    its batches ``rank``, ``rank + world_size``, ...; every rank yields as many batches (a DDP
    step needs each). The batches left that fill no round of ``world_size`` are split among
    the ranks as lhotse splits a last round (:func:`split_round`: a cut repeated as
    ``<id>_dup<k>`` when fewer cuts than ranks are left), so that no cut of the epoch is lost;
    with ``drop_last``, fewer cuts than ranks are left out instead (logged) and none repeated.

    Args:
        rounds: the epoch's stream for ``stream_world_size`` processes (:func:`stream_rounds`).
        stream_world_size: the number of processes the stream is sampled for.
        skip: the global batches of that stream already trained on.
        rank: this process's rank.
        world_size: the number of processes sharing the rest.
        drop_last: the training sampler's ``drop_last``.
    """
    rest = _untrained_batches(rounds, stream_world_size, skip, drop_last)
    while True:
        batches = list(itertools.islice(rest, world_size))
        if len(batches) == world_size:
            yield batches[rank]
            continue
        if not batches:
            return
        cuts = sum(map(len, batches))
        if drop_last and cuts < world_size:
            logger.info("the last %d cut(s) of the epoch's stream are left out: fewer than the "
                        "%d processes that share it (data.drop_last)", cuts, world_size)
            return
        yield split_round(batches, world_size)[rank]
        return
