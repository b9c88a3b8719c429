"""DynamicBucketingSampler from DataConfig: max_duration, DDP sharding, resumable state."""

from __future__ import annotations

import itertools
import random

import pytest
from lhotse import CutSet, MonoCut
from lhotse.dataset.sampling.base import TimeConstraint
from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets

from asr.data.config import DataConfig
from asr.data.sampler import make_sampler, resolve_rank_world_size


def _cuts(prepared: dict) -> CutSet:
    return CutSet.from_file(prepared["fbank"]["train-clean-5"]) + CutSet.from_file(
        prepared["fbank"]["dev-clean-2"])


def _cfg(**kw) -> DataConfig:
    base = dict(max_duration=3.0, max_cut_duration=2.5, num_buckets=2, shuffle=True,
                drop_last=False, seed=3)
    base.update(kw)
    return DataConfig(**base)


@pytest.mark.parametrize("train", [True, False])
def test_batches_respect_max_duration_and_cover_once(prepared: dict, train: bool) -> None:
    cuts = _cuts(prepared)
    batches = list(make_sampler(cuts, _cfg(), train=train))
    assert len(batches) > 2
    for batch in batches:
        assert sum(c.duration for c in batch) <= 3.0 + 1e-6
    ids = [c.id for batch in batches for c in batch]
    assert sorted(ids) == sorted(c.id for c in cuts)  # every cut exactly once


def test_two_ranks_are_disjoint_and_cover(prepared: dict) -> None:
    cuts = _cuts(prepared)
    cfg = _cfg(max_duration=2.2, max_cut_duration=2.2)
    per_rank = []
    for rank in (0, 1):
        sampler = make_sampler(cuts, cfg, train=True, rank=rank, world_size=2)
        per_rank.append([c.id for batch in sampler for c in batch])
    assert per_rank[0] and per_rank[1]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(c.id for c in cuts)


def test_state_dict_resumes_mid_epoch(prepared: dict) -> None:
    cuts = _cuts(prepared)
    full = [[c.id for c in b] for b in make_sampler(cuts, _cfg(), train=True)]
    sampler = make_sampler(cuts, _cfg(), train=True)
    it = iter(sampler)
    consumed = [[c.id for c in next(it)] for _ in range(2)]
    state = sampler.state_dict()
    resumed = make_sampler(cuts, _cfg(), train=True)
    resumed.load_state_dict(state)
    rest = [[c.id for c in b] for b in resumed]
    assert consumed + rest == full


def test_shuffle_depends_on_epoch_and_seed(prepared: dict) -> None:
    cuts = _cuts(prepared)

    def order(epoch: int, seed: int) -> list[str]:
        sampler = make_sampler(cuts, _cfg(seed=seed), train=True)
        sampler.set_epoch(epoch)
        return [c.id for b in sampler for c in b]

    assert order(0, 3) == order(0, 3)
    assert order(0, 3) != order(1, 3)
    assert order(0, 3) != order(0, 4)
    evaluation = make_sampler(cuts, _cfg(), train=False)
    assert [c.id for b in evaluation for c in b] == [c.id for b in make_sampler(
        cuts, _cfg(seed=9), train=False) for c in b]


def test_resolve_rank_world_size() -> None:
    assert resolve_rank_world_size() == (0, 1)
    assert resolve_rank_world_size(1, 4) == (1, 4)
    with pytest.raises(ValueError, match="rank=2 world_size=2"):
        resolve_rank_world_size(2, 2)


def test_single_bucket_and_more_buckets_than_cuts(prepared: dict) -> None:
    from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler

    cuts = CutSet.from_file(prepared["fbank"]["dev-clean-2"])  # 3 cuts
    for num_buckets, kind in ((1, DynamicCutSampler), (30, DynamicBucketingSampler)):
        sampler = make_sampler(cuts, _cfg(num_buckets=num_buckets), train=False)
        assert isinstance(sampler, kind)
        batches = list(sampler)
        assert sorted(c.id for b in batches for c in b) == sorted(c.id for c in cuts)
        assert all(sum(c.duration for c in b) <= 3.0 + 1e-6 for b in batches)


@pytest.mark.parametrize("train", [True, False])
def test_cuts_without_a_bucket_boundary_are_sampled_without_a_numpy_warning(train) -> None:
    """Two cuts, the longer last (a small dev set: the trainer's dev WER), give lhotse's
    estimate no bucket boundary: its bucketing sampler averaged the empty list of boundaries,
    and every run showed numpy's "Mean of empty slice" RuntimeWarning. Such cuts are sampled
    as one bucket, each once."""
    import warnings

    from lhotse.dataset import DynamicCutSampler

    cuts = _timed_cuts([1.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler = make_sampler(cuts, _cfg(num_buckets=2), train=train)
        batches = [[c.id for c in batch] for batch in sampler]
    assert isinstance(sampler, DynamicCutSampler)
    assert sorted(i for batch in batches for i in batch) == ["cut-0", "cut-1"]


@pytest.mark.parametrize("num_buckets", [1, 2])
def test_eager_cuts_give_the_lazy_batches_without_lhotse_warnings(prepared: dict,
                                                                   num_buckets: int) -> None:
    """In-memory cuts are seen lazily by the samplers: the same batches as the same cuts read
    lazily from their manifests, also when resuming, and no eager-CutSet warning."""
    import warnings

    lazy = (CutSet.from_jsonl_lazy(prepared["fbank"]["train-clean-5"])
            + CutSet.from_jsonl_lazy(prepared["fbank"]["dev-clean-2"]))
    eager = _cuts(prepared).to_eager()
    assert lazy.is_lazy and not eager.is_lazy
    cfg = _cfg(num_buckets=num_buckets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        runs = []
        for cuts in (lazy, eager):
            sampler = make_sampler(cuts, cfg, train=True)
            sampler.set_epoch(2)
            batches = [[c.id for c in batch] for batch in sampler]
            sampler.set_epoch(2)
            it = iter(sampler)
            next(it)
            state = sampler.state_dict()
            resumed = make_sampler(cuts, cfg, train=True)
            resumed.load_state_dict(state)
            runs.append((batches, [[c.id for c in batch] for batch in resumed]))
    assert runs[0] == runs[1] and runs[0][1] == runs[0][0][1:]
    assert len(runs[0][0]) > 2


def test_an_epoch_without_batches_is_an_error_and_left_out_cuts_are_logged(prepared: dict,
                                                                          caplog) -> None:
    """drop_last keeps only batches that fill max_duration in their bucket: a corpus too small
    for its buckets gave an empty epoch (training did nothing, silently)."""
    import logging

    from librispeech_tree import CharEncoder

    from asr.data.epochs import EpochBatches

    cuts = CutSet.from_file(prepared["fbank"]["train-clean-5"]).to_eager()  # 8 cuts, 9.6 s
    too_large = EpochBatches(cuts, _cfg(max_duration=20.0, drop_last=True, num_workers=0),
                             CharEncoder())
    with pytest.raises(ValueError, match="epoch 1 gave no training batch.*data.drop_last"):
        list(too_large(1, 0))
    assert list(too_large(1, 3)) == []  # resumed past the end of an epoch: nothing left, fine
    caplog.set_level(logging.INFO, logger="asr.data.epochs")
    batches = list(EpochBatches(cuts, _cfg(drop_last=True, num_workers=0), CharEncoder())(1, 0))
    kept = sum(len(b.cut_ids) for b in batches)
    assert 0 < kept < len(cuts)
    assert (
        f"{len(batches)} batches (0 global batches skipped at resumption), {kept} cuts"
        in caplog.text
    )
    assert f"{len(cuts) - kept} of {len(cuts)} cuts left out" in caplog.text


@pytest.mark.parametrize("world_size", [1, 2])
def test_evaluation_keeps_every_cut_whatever_drop_last_says(prepared: dict,
                                                            world_size: int) -> None:
    """``drop_last`` is for training: an evaluation sampler given a config with it still yields
    every cut (a dropped last batch would score a WER on part of the test set)."""
    cuts = _cuts(prepared)
    cfg = _cfg(drop_last=True, max_duration=2.2, max_cut_duration=2.2)
    ids = [c.id.removesuffix("_dup") for rank in range(world_size)
           for batch in make_sampler(cuts, cfg, train=False, rank=rank, world_size=world_size)
           for c in batch]
    assert set(ids) == {c.id for c in cuts}
    trained = [c.id for rank in range(world_size)
               for batch in make_sampler(cuts, cfg, train=True, rank=rank, world_size=world_size)
               for c in batch]
    assert len(trained) < len(cuts)  # what the same config drops when training


def test_the_buffer_size_reaches_the_sampler(prepared: dict) -> None:
    cuts = _cuts(prepared)
    assert make_sampler(cuts, _cfg(buffer_size=123), train=True).buffer_size == 123
    single = make_sampler(cuts, _cfg(buffer_size=45, num_buckets=1), train=True)
    assert single.shuffle_buffer_size == 45


def _drifting_cuts(count: int) -> CutSet:
    """``count`` (> 10000) cuts without data (the bucket estimate reads only durations): the
    first 10 of 30 s, then durations growing from 1 to 10 s up to cut 10000, then 25 s ones;
    so the boundaries estimated from any other number of first cuts differ."""

    def duration(i: int) -> float:
        if i < 10:
            return 30.0
        return round(1.0 + 9.0 * i / 10000, 4) if i < 10000 else 25.0

    return CutSet.from_cuts(MonoCut(f"cut-{i}", 0.0, duration(i), 0) for i in range(count))


def test_duration_buckets_are_estimated_from_the_first_10000_cuts() -> None:
    """lhotse's own sample for the estimate: the first 10000 cuts, no fewer (unrepresentative
    first cuts) and no more (the whole of a large corpus would be read before the first batch)."""
    cuts = _drifting_cuts(10500)
    cfg = _cfg(max_duration=60.0, max_cut_duration=40.0, num_buckets=4)
    sampler = make_sampler(cuts, cfg, train=True)

    def estimate(first: int) -> list[float]:
        return [float(b) for b in estimate_duration_buckets(
            itertools.islice(cuts, first), num_buckets=4,
            constraint=TimeConstraint(max_duration=60.0))]

    bins = [float(b) for b in sampler.duration_bins]
    assert bins == estimate(10000)
    assert 1.0 < bins[0] < bins[-1] < 10.0  # neither the 30 s head nor the 25 s tail
    for other in (10, 9999, 10001, 10500):  # the corpus tells these apart
        assert estimate(other) != bins, other


def _timed_cuts(durations: list[float]) -> CutSet:
    return CutSet.from_cuts(MonoCut(f"cut-{i}", 0.0, d, 0) for i, d in enumerate(durations))


def _within_lhotses_bound(batch, max_duration: float) -> bool:
    """lhotse's bound (module docstring): over ``max_duration`` by at most the last cut's excess
    over the longest one before it."""
    durations = [c.duration for c in batch]
    excess = durations[-1] - max(durations[:-1]) if len(durations) > 1 else 0.0
    return len(durations) == 1 or sum(durations) <= max_duration + max(excess, 0.0) + 1e-6


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("num_buckets", [1, 3])
def test_evaluation_ranks_see_every_cut_exactly_once_in_bounded_batches(world_size: int,
                                                                        num_buckets: int) -> None:
    """lhotse splits the last batches of a distributed evaluation among the ranks: it repeated
    cuts (``<id>_dup0``, scored twice by the validation loss) when fewer cuts than ranks were
    left, and merged batches of different lengths into one (a 9 s cut with three 1 s ones under
    max_duration 10: 12 s, 36 s padded). Each rank now samples its own share of the cuts."""
    rng = random.Random(world_size)
    spread = [round(rng.uniform(0.5, 5.0), 2) for _ in range(37)]
    for durations in (spread, [9.0] + [1.0] * 10, [2.0], [2.0, 3.0, 4.0]):
        cuts = _timed_cuts(durations)
        cfg = _cfg(max_duration=10.0, max_cut_duration=9.0, num_buckets=num_buckets, seed=1)
        ids = []
        for rank in range(world_size):
            for batch in make_sampler(cuts, cfg, train=False, rank=rank, world_size=world_size):
                assert len(batch) > 0 and _within_lhotses_bound(batch, 10.0), list(batch)
                ids += [c.id for c in batch]
        assert sorted(ids) == sorted(c.id for c in cuts), durations  # each once, no _dup


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_buckets", [1, 3])
def test_training_batches_keep_lhotses_bound_on_every_rank(world_size: int,
                                                           num_buckets: int) -> None:
    """With drop_last (the training default) every batch of every rank is non-empty and within
    the documented bound, the ranks are disjoint and yield as many batches."""
    rng = random.Random(7)
    cuts = _timed_cuts([round(rng.uniform(0.5, 5.0), 2) for _ in range(41)])
    cfg = _cfg(max_duration=10.0, max_cut_duration=5.0, num_buckets=num_buckets,
               drop_last=True, seed=2)
    per_rank = []
    for rank in range(world_size):
        sampler = make_sampler(cuts, cfg, train=True, rank=rank, world_size=world_size)
        sampler.set_epoch(4)
        batches = list(sampler)
        assert batches and all(len(b) > 0 and _within_lhotses_bound(b, 10.0) for b in batches)
        per_rank.append([[c.id for c in b] for b in batches])
    assert len({len(batches) for batches in per_rank}) == 1
    ids = [cut_id for batches in per_rank for batch in batches for cut_id in batch]
    assert len(ids) == len(set(ids)) and "_dup" not in "".join(ids)


def _batch(first: int, count: int) -> CutSet:
    """A batch of ``count`` one-second cuts ``c<first>``, ``c<first + 1>``..."""
    return CutSet.from_cuts(MonoCut(id=f"c{i}", start=0.0, duration=1.0, channel=0)
                            for i in range(first, first + count))


@pytest.mark.parametrize("second_world", [1, 2, 4])
def test_a_resumed_epoch_resumed_again_inside_the_old_streams_last_round_trains_each_cut_once(
        second_world: int) -> None:
    """The stream of 4 processes ends in a short round of 2 batches (10 and 6 cuts), which those
    4 ranks split into 4 parts. A run of 1 process resumed after the full round trains a batch of
    that round, and counts it as one global batch of the stream; resumed from there again, that
    position was read as one of the 4 ranks' parts (4 cuts) trained, and the 6 other cuts of
    the batch trained were trained again."""
    from asr.data.sampler import resumed_share

    rounds = [[_batch(0, 3), _batch(3, 3), _batch(6, 3), _batch(9, 3)],
              [_batch(12, 10), _batch(22, 6)]]
    first = list(resumed_share(iter(rounds), 4, 4, 0, 1, drop_last=False))
    trained = [c.id for c in first[0]]  # the first batch of the resumed run, then killed
    rest = [c.id for rank in range(second_world)
            for batch in resumed_share(iter(rounds), 4, 5, rank, second_world, drop_last=False)
            for c in batch if "_dup" not in c.id]
    assert sorted(trained + rest) == sorted(f"c{i}" for i in range(12, 28))
    assert sorted(c.id for batch in first for c in batch) == sorted(f"c{i}" for i in range(12, 28))
