"""EpochBatches across ranks and resumptions: manifests (lazy or in memory) and Lhotse Shar."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from lhotse import CutSet
from librispeech_tree import CharEncoder

from asr.data.config import DataConfig
from asr.data.epochs import EpochBatches
from asr.data.filtering import filter_cuts
from asr.data.shar import SharCuts, export_shar


@pytest.fixture(scope="module")
def both_parts_shar(prepared, tmp_path_factory) -> Path:
    """Both prepared parts (11 cuts) as Shar shards of 3 cuts with their stored features."""
    out = tmp_path_factory.mktemp("shar") / "both"
    export_shar([prepared["fbank"]["train-clean-5"], prepared["fbank"]["dev-clean-2"]], out,
                {"features": "numpy"}, shard_size=3, progress=False)
    return out


@pytest.mark.parametrize("source", ["lazy", "eager", "shar", "filtered shar"])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_are_disjoint_equal_and_resume_at_every_batch(prepared, both_parts_shar,
                                                            source: str, drop_last: bool,
                                                            world_size: int) -> None:
    """Every rank yields as many batches (a DDP step needs each), no cut reaches two ranks, all
    cuts are trained on without drop_last (11 cuts: uneven for 2 and 3 ranks), and an epoch
    resumed after any number of its batches (``skip`` counts those of all ranks) yields exactly
    the rest of them. Filtered Shar (as
    training filters it, :func:`asr.run.train._load_shar`: its manifests too, which the buckets
    are estimated from) leaves out the cut longer than 2 s and resumes alike."""
    cfg = DataConfig(max_duration=2.5, max_cut_duration=2.5, num_buckets=2, shuffle=True,
                     drop_last=drop_last, num_workers=0, seed=5)
    paths = [prepared["fbank"]["train-clean-5"], prepared["fbank"]["dev-clean-2"]]
    longest = 2.0 if source == "filtered shar" else float("inf")
    every_id = {c.id for path in paths for c in CutSet.from_file(path) if c.duration <= longest}
    assert len(every_id) == (10 if source == "filtered shar" else 11)

    def epoch_batches(rank: int) -> EpochBatches:
        if source.endswith("shar"):
            shar = SharCuts([both_parts_shar], "features", shuffle=True, seed=5)
            shar, _ = filter_cuts(shar.manifests, CharEncoder(), lambda n: n,
                                  max_duration=longest, apply_to=shar)
            return EpochBatches(shar.cuts, cfg, CharEncoder(), rank, world_size, shar=shar)
        cuts = CutSet.from_jsonl_lazy(paths[0]) + CutSet.from_jsonl_lazy(paths[1])
        return EpochBatches(cuts if source == "lazy" else cuts.to_eager(), cfg, CharEncoder(),
                            rank, world_size)

    per_rank = []
    for rank in range(world_size):
        batches = epoch_batches(rank)
        full = [b.cut_ids for b in batches(2, 0)]
        for skip in range(len(full) + 1):
            resumed = batches(2, skip * world_size)  # the global batches of all ranks
            assert [b.cut_ids for b in resumed] == full[skip:], (rank, skip)
        per_rank.append(full)
    assert len({len(full) for full in per_rank}) == 1 and per_rank[0]
    ids = [cut_id for full in per_rank for batch in full for cut_id in batch]
    real = [cut_id for cut_id in ids if "_dup" not in cut_id]
    assert len(real) == len(set(real)) and set(real) <= every_id
    if not drop_last:
        assert set(real) == every_id


def _real(cut_ids) -> Counter:
    """The cuts of ``cut_ids`` less lhotse's repeats (``<id>_dup<k>``) of the end of an epoch."""
    return Counter(cut_id for cut_id in cut_ids if not re.search(r"_dup[0-9]+$", cut_id))


@pytest.mark.parametrize("source", ["lazy", "shar"])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize(("old_world", "new_world"), [(1, 2), (2, 1), (2, 3), (3, 2), (1, 3),
                                                      (4, 2)])
def test_an_epoch_resumed_with_another_number_of_processes_trains_what_was_left(
        prepared, both_parts_shar, source: str, drop_last: bool, old_world: int,
        new_world: int) -> None:
    """A checkpoint after ``k`` batches per rank of ``old_world`` processes holds ``k x
    old_world`` global batches of the old stream; ``new_world`` processes resumed from it take
    the rest of that stream, as many batches each, and train exactly the cuts that the
    uninterrupted run would still have trained, each once. Checked only as a set of the
    epoch's cuts, the resumed run left out the batches of the old stream that filled no round
    of the new ranks (drop_last: up to 2 batches for 3 ranks, 3 cuts here), and without
    drop_last trained the repeats (``<id>_dup<k>``) that the old ranks' split of their last
    round made, and repeats of those (``_dup0_dup0``). Now the batches left are split among
    the new ranks as lhotse splits a last round: repeats only where fewer cuts than ranks are
    left (drop_last: those few cuts left out instead). Every position of the old ranks is
    tried, from manifests and from Shar (every replayed rank reads the shards)."""
    cfg = DataConfig(max_duration=2.5, max_cut_duration=2.5, num_buckets=2, shuffle=True,
                     drop_last=drop_last, num_workers=0, seed=5)
    paths = [prepared["fbank"]["train-clean-5"], prepared["fbank"]["dev-clean-2"]]

    def epoch_batches(rank: int, world_size: int) -> EpochBatches:
        if source == "shar":
            shar = SharCuts([both_parts_shar], "features", shuffle=True, seed=5)
            return EpochBatches(shar.cuts, cfg, CharEncoder(), rank, world_size, shar=shar)
        cuts = CutSet.from_jsonl_lazy(paths[0]) + CutSet.from_jsonl_lazy(paths[1])
        return EpochBatches(cuts, cfg, CharEncoder(), rank, world_size)

    old = [epoch_batches(rank, old_world) for rank in range(old_world)]
    new = [epoch_batches(rank, new_world) for rank in range(new_world)]
    old_full = [[b.cut_ids for b in batches(3, 0)] for batches in old]
    per_rank = len(old_full[0])
    stream = [old_full[rank][i] for i in range(per_rank) for rank in range(old_world)]
    for k in range(per_rank + 1):
        skip = k * old_world
        after = [[b.cut_ids for b in batches(3, skip, old_world)] for batches in new]
        assert len({len(share) for share in after}) == 1, (k, after)
        seen = [c for share in after for ids in share for c in ids]
        left = _real(c for ids in stream[skip:] for c in ids)
        short = len(stream[skip:]) % new_world  # batches of no full round of the new ranks
        last = sum((len(ids) for ids in stream[len(stream) - short:]), 0) if short else 0
        if drop_last and 0 < last < new_world:  # fewer cuts than ranks: left out, not repeated
            left -= _real(c for ids in stream[len(stream) - short:] for c in ids)
        assert _real(seen) == left, k
        repeats = len(seen) - len(list(_real(seen).elements()))
        assert repeats < new_world and (repeats == 0 or not drop_last), (k, seen)
        assert all(re.search(r"_dup[0-9]+$", c) is None for share in after
                   for ids in share[:-1] for c in ids), k  # repeats only in the last round


def test_the_epoch_stream_names_the_sampler_and_what_unrecorded_checkpoints_sampled(
        prepared) -> None:
    """A checkpoint's count of batches is a position in one stream: EpochBatches names it for
    the trainer to record. Cuts among which the bucket estimate finds no boundary (the shortest
    and then the longest cut) are sampled as one bucket, where versions that recorded no stream
    sampled them with lhotse's bucketing sampler and no boundary: an old checkpoint of such a
    corpus is in that stream. Bucketed cuts are in the same stream either way."""
    from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets

    from asr.data.sampler import ONE_BUCKET

    cfg = DataConfig(max_duration=2.5, max_cut_duration=2.5, num_buckets=2, num_workers=0)
    cuts = (CutSet.from_file(prepared["fbank"]["train-clean-5"])
            + CutSet.from_file(prepared["fbank"]["dev-clean-2"])).to_eager()
    ordered = sorted(cuts, key=lambda c: c.duration)
    tiny = CutSet.from_cuts([ordered[0], ordered[-1]])
    assert estimate_duration_buckets(tiny, num_buckets=2) == []
    batches = EpochBatches(tiny, cfg, CharEncoder())
    assert (batches.stream, batches.unrecorded_stream) == (ONE_BUCKET, "duration buckets at [] s")
    bins = estimate_duration_buckets(cuts, num_buckets=2)
    batches = EpochBatches(cuts, cfg, CharEncoder())
    expected = f"duration buckets at [{float(bins[0])!r}] s"
    assert batches.stream == batches.unrecorded_stream == expected
    one = EpochBatches(tiny, DataConfig(max_duration=2.5, max_cut_duration=2.5, num_buckets=1,
                                        num_workers=0),
                       CharEncoder())
    assert one.stream == one.unrecorded_stream == ONE_BUCKET  # it never bucketed


@pytest.mark.parametrize(("old_world", "first_world", "second_world"),
                         [(4, 1, 1), (4, 1, 2), (3, 2, 1), (4, 3, 4)])
def test_an_epoch_resumed_twice_with_other_numbers_of_processes_trains_what_was_left(
        prepared, old_world: int, first_world: int, second_world: int) -> None:
    """The stream of ``old_world`` processes stopped after ``skip`` global batches; a run of
    ``first_world`` processes trains ``t`` batches each of the rest (counting ``t x
    first_world`` more) and stops; a run of ``second_world`` resumes from that count. Where
    the first resumed run had trained batches of the old stream's short last round, the
    second read its count as the old ranks' parts of that round and trained cuts again (or
    left some out). Every stop of both runs is tried."""
    # seed 3: 4 processes' epoch 3 ends in a round of batches of 2, 1 and 3 cuts, which they
    # split into parts of 2, 2, 1 and 1
    cfg = DataConfig(max_duration=2.5, max_cut_duration=2.5, num_buckets=2, shuffle=True,
                     drop_last=False, num_workers=0, seed=3)
    paths = [prepared["fbank"]["train-clean-5"], prepared["fbank"]["dev-clean-2"]]

    def shares(world_size: int, skip: int) -> list[list[list[str]]]:
        cuts = CutSet.from_jsonl_lazy(paths[0]) + CutSet.from_jsonl_lazy(paths[1])
        return [[b.cut_ids for b in EpochBatches(cuts, cfg, CharEncoder(), rank, world_size)(
            3, skip, old_world)] for rank in range(world_size)]

    old_full = shares(old_world, 0)
    stream = [ids for i in range(len(old_full[0])) for share in old_full for ids in [share[i]]]
    for k in range(1, len(old_full[0])):
        skip = k * old_world
        left = _real(c for ids in stream[skip:] for c in ids)
        first = shares(first_world, skip)
        for t in range(len(first[0])):
            trained = [c for share in first for ids in share[:t] for c in ids]
            second = shares(second_world, skip + t * first_world)
            seen = trained + [c for share in second for ids in share for c in ids]
            assert _real(seen) == left, (k, t)


@pytest.mark.parametrize("seed", [3, 5])
def test_the_budget_counts_the_batches_each_rank_draws_after_a_world_size_change(
        prepared, seed: int) -> None:
    """Without drop_last, every rank draws ``ceil(G / N)`` of the ``G`` global batches left of
    an epoch: a whole epoch sampled for its ``N`` processes (lhotse splits the last round they
    do not fill), the rest of one resumed with another number of processes, and the rest of one
    resumed again at a position of no round of its own processes. The budget
    (:func:`asr.train.budget.epoch_steps`, fed the epoch's record of the ``old`` processes'
    stream, which repeats no cut here) counted ``floor(G / N)`` for an epoch of its own
    processes and for a resumed epoch back on the stream's number of processes: a step short
    per epoch after the change, and at the end of such a twice-resumed epoch."""
    from asr.train.budget import epoch_steps
    from asr.train.state import EpochRecord, Progress

    cfg = DataConfig(max_duration=2.5, max_cut_duration=2.5, num_buckets=2, shuffle=True,
                     drop_last=False, num_workers=0, seed=seed)
    paths = [prepared["fbank"]["train-clean-5"], prepared["fbank"]["dev-clean-2"]]

    def drawn(world_size: int, skip: int, stream_world_size: int) -> list[int]:
        """The batches each of ``world_size`` ranks draws of epoch 3 after ``skip``."""
        cuts = CutSet.from_jsonl_lazy(paths[0]) + CutSet.from_jsonl_lazy(paths[1])
        return [len(list(EpochBatches(cuts, cfg, CharEncoder(), rank, world_size)(
            3, skip, stream_world_size))) for rank in range(world_size)]

    def budget(batches: int, into: int, stream_world_size: int, world_size: int
               ) -> tuple[int, int]:
        progress = Progress(epoch=3, step=9, batches_in_epoch=into,
                            epoch_world_size=stream_world_size,
                            history=[EpochRecord(2, 1.0, step=9, batches=batches)])
        return epoch_steps(progress, 1, world_size, drop_last=False)

    checked = wholes = 0
    for old, new in [(1, 2), (1, 3), (2, 3), (4, 3), (3, 4)]:
        cuts = CutSet.from_jsonl_lazy(paths[0]) + CutSet.from_jsonl_lazy(paths[1])
        old_full = [[b.cut_ids for b in EpochBatches(cuts, cfg, CharEncoder(), rank, old)(3, 0)]
                    for rank in range(old)]
        if not all(_real(ids) for share in old_full for ids in share):
            continue  # a part of repeats alone: not trained again by other processes
        total = old * len(old_full[0])  # the epoch's record: every rank's batches
        cuts = CutSet.from_jsonl_lazy(paths[0]) + CutSet.from_jsonl_lazy(paths[1])
        new_full = [[b.cut_ids for b in EpochBatches(cuts, cfg, CharEncoder(), rank, new)(3, 0)]
                    for rank in range(new)]
        if sum(bool(_real(ids)) for share in new_full for ids in share) == total:
            # the new processes' stream as long as the old one's (it may not be: lhotse draws
            # a bucket per round of them): each draws the whole epoch's share of the record
            assert budget(total, 0, new, new)[0] == len(new_full[0]), (old, new)
            wholes += 1
        for k in range(1, len(old_full[0])):
            rest = drawn(new, k * old, old)
            assert budget(total, k * old, old, new)[1] == rest[0], (old, new, k)
            for t in range(1, rest[0]):  # and back on the stream's processes
                into = k * old + t * new
                again = drawn(old, into, old)
                assert budget(total, into, old, old)[1] == again[0], (old, new, k, t)
                checked += 1
    assert checked >= 3 and wholes >= (seed == 5), (checked, wholes)


#: A run of the real Trainer on EpochBatches of the prepared cuts (``MANIFESTS``), recording
#: the batches each rank trained on: ``first`` (1 process) trains epoch 1 whole into ``full``
#: and stops after 3 steps of it into ``exp``; ``resume`` (any number) resumes ``exp`` and
#: trains epoch 2 too.
WORLD_CHANGE_SCRIPT = r'''
import json, os, sys, torch
from torch import nn
sys.path[:0] = [os.environ["TEST_DIR"], os.path.dirname(os.environ["TEST_DIR"])]
from lhotse import CutSet
from librispeech_tree import CharEncoder
from torchrun_helpers import report_up
from asr.data.config import DataConfig
from asr.data.epochs import EpochBatches
from asr.process_exit import end_process
from asr.train.distributed import setup_distributed, cleanup_distributed
from asr.train.optim import OptimConfig
from asr.train.state import TrainConfig
from asr.train.trainer import Trainer
info = setup_distributed("cpu")
report_up(info.rank)
out, phase = os.environ["OUT_DIR"], os.environ["PHASE"]

class Out:
    def __init__(self, loss, num_utterances):
        self.loss, self.num_utterances, self.metrics = loss, num_utterances, {}

class Recording(nn.Module):
    """Regresses mean features onto token counts; records the cuts it trains on."""
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(80, 1)
        self.seen = []

    def forward(self, batch, step=0):
        if self.training:
            self.seen.append(list(batch.cut_ids))
        pooled = batch.feats.sum(1) / batch.feat_lens[:, None].float()
        loss = ((self.net(pooled).squeeze(-1) - batch.token_lens.float()) ** 2).sum()
        return Out(loss, batch.batch_size)

def fit(name, max_steps=0, resume=False, max_epochs=1):
    torch.manual_seed(0)
    cfg = DataConfig(max_duration=2.5, max_cut_duration=2.5, num_buckets=2, shuffle=True,
                     drop_last=False, num_workers=0, seed=5)
    cuts = CutSet.from_jsonl_lazy(os.environ["MANIFESTS"])
    model = Recording()
    trainer = Trainer(model, OptimConfig(lr=1e-3, warmup_steps=3),
                      TrainConfig(max_epochs=max_epochs, max_steps=max_steps, checkpoint_interval=0,
                                  average_period=0),
                      os.path.join(out, name),
                      EpochBatches(cuts, cfg, CharEncoder(), info.rank, info.world_size),
                      dist=info)
    if resume:
        assert trainer.resume()
    progress = trainer.fit()
    with open(os.path.join(out, f"{name}-{phase}{info.rank}.json"), "w") as f:
        json.dump({"seen": model.seen, "step": progress.step,
                   "epochs": [(r.step, r.batches) for r in progress.history]}, f)

if phase == "first":
    fit("full")
    fit("exp", max_steps=3)
else:
    fit("exp", resume=True, max_epochs=2)
cleanup_distributed()
end_process(0)
'''


def test_the_trainer_resumed_on_two_processes_trains_the_cuts_one_had_left(prepared, tmp_path):
    """The real Trainer on EpochBatches: 1 process trains 3 steps of an epoch and stops; 2
    processes resume its checkpoint and train, between them, exactly the cuts that the
    uninterrupted 1-process run trained after those 3 steps, each once (the last batch left,
    which fills no round of 2, split between them), in the steps the budget counts
    (:func:`asr.train.budget.epoch_steps`)."""
    from torchrun_helpers import UP_LINE, run_torchrun

    from asr.train.budget import epoch_steps
    from asr.train.state import EpochRecord, Progress

    manifests = tmp_path / "cuts.jsonl.gz"
    (CutSet.from_file(prepared["fbank"]["train-clean-5"])
     + CutSet.from_file(prepared["fbank"]["dev-clean-2"])).to_file(manifests)
    script = tmp_path / "world_change.py"
    script.write_text(WORLD_CHANGE_SCRIPT)
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TEST_DIR=str(Path(__file__).parent), OUT_DIR=str(tmp_path),
               MANIFESTS=str(manifests), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(repo),
                                                        os.environ.get("PYTHONPATH")])))
    first = subprocess.run([sys.executable, str(script)], env=dict(env, PHASE="first"),
                           capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr[-3000:]
    run_torchrun([str(script)], nproc=2, env=dict(env, PHASE="resume"), timeout=180,
                 up=UP_LINE)
    full = json.loads((tmp_path / "full-first0.json").read_text())
    stop = json.loads((tmp_path / "exp-first0.json").read_text())
    resumed = [json.loads((tmp_path / f"exp-resume{rank}.json").read_text()) for rank in (0, 1)]
    assert stop["step"] == 3 and full["seen"][:3] == stop["seen"]
    (end_1, batches_1), (end_2, _) = resumed[0]["epochs"]
    left = end_1 - 3  # each resumed rank's batches of epoch 1 (a step each)
    trained = _real(c for run in resumed for ids in run["seen"][:left] for c in ids)
    assert trained == _real(c for ids in full["seen"][3:] for c in ids) and trained
    assert max(trained.values()) == 1
    # the steps the budget counts: the rest of epoch 1 at the resumption, from the
    # uninterrupted run's record, and epoch 2, from epoch 1's (3 + 2 x 2 global batches of 7)
    progress = Progress(epoch=1, step=3, batches_in_epoch=3, epoch_world_size=1,
                        history=[EpochRecord(0, 1.0, step=0, batches=full["step"])])
    assert epoch_steps(progress, 1, 2, drop_last=False)[1] == left
    progress = Progress(epoch=2, step=end_1, batches_in_epoch=0, epoch_world_size=2,
                        history=[EpochRecord(1, 1.0, step=end_1, batches=batches_1)])
    assert epoch_steps(progress, 1, 2, drop_last=False)[0] == end_2 - end_1
