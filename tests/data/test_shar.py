"""Lhotse Shar: export round trip (features, audio), errors naming the directory/field/cut,
per-epoch shard order that does not depend on how often the reader was iterated, and batches
from Shar equal to batches from the manifests."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from lhotse import CutSet
from librispeech_tree import CharEncoder

from asr.data.config import DataConfig
from asr.data.dataset import DataError, make_dataloader
from asr.data.shar import SharCuts, export_shar, shar_fields


def _train_cuts(prepared: dict) -> CutSet:
    return CutSet.from_file(prepared["fbank"]["train-clean-5"])


@pytest.fixture(scope="module")
def shar_dir(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("shar") / "train"
    written = export_shar(_train_cuts(prepared), out, {"features": "numpy"}, shard_size=2)
    assert sorted(written) == ["cuts", "features"] and len(written["cuts"]) == 4
    return out


def test_export_round_trip_keeps_ids_order_and_features(prepared, shar_dir):
    original = _train_cuts(prepared)
    shar = SharCuts([shar_dir], "features", shuffle=False, seed=0)
    read = list(shar.cuts)
    assert [c.id for c in read] == [c.id for c in original]
    assert [c.id for c in shar.manifests] == [c.id for c in original]
    for a, b in zip(original, read):
        np.testing.assert_array_equal(a.load_features(), b.load_features())
        assert a.supervisions[0].text == b.supervisions[0].text
    assert shar_fields(shar_dir)["features"][0].name == "features.000000.tar"


def test_export_audio_for_on_the_fly_features(prepared, tmp_path):
    cuts = CutSet.from_file(prepared["manifests"]["dev-clean-2"])
    export_shar(cuts, tmp_path / "audio", {"recording": "flac"}, shard_size=10)
    read = list(SharCuts([tmp_path / "audio"], "recording", shuffle=True, seed=1).cuts)
    assert [c.id for c in read] == [c.id for c in cuts]
    for a, b in zip(cuts, read):
        np.testing.assert_array_equal(a.load_audio(), b.load_audio())  # flac is lossless


def test_export_and_read_errors_name_what_is_wrong(prepared, shar_dir, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")  # not a Shar directory: never replaced
    with pytest.raises(FileExistsError, match=r"data exists and is not a Shar directory .*notes"):
        export_shar(_train_cuts(prepared), tmp_path / "data", {"features": "numpy"})
    assert (tmp_path / "data" / "notes.txt").read_text() == "mine"
    no_feats = CutSet.from_file(prepared["manifests"]["dev-clean-2"])
    with pytest.raises(ValueError, match=r"cut '.*' has no features"):
        export_shar(no_feats, tmp_path / "x", {"features": "lilcom"})
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.tmp").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SharCuts([tmp_path / "missing"], "features", shuffle=False, seed=0)
    with pytest.raises(ValueError, match=r"has no 'recording' shards \(it has \['features'\]\)"):
        SharCuts([shar_dir], "recording", shuffle=False, seed=0)
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in shar_dir.iterdir():
        if path.name != "features.000002.tar":
            (broken / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=r"field 'features' has shards \[0, 1, 3\]"):
        shar_fields(broken)


def test_a_rerun_keeps_shards_of_the_same_cuts_and_replaces_stale_ones(prepared, tmp_path,
                                                                        caplog):
    """`run.sh --use-shar true` used to keep a Shar directory once written (and `asr shar`
    refused an existing one), so training read the shards of cuts that had changed since."""
    caplog.set_level(logging.INFO)
    cuts = _train_cuts(prepared)
    out = tmp_path / "shar"
    export_shar(cuts.subset(first=4), out, {"features": "numpy"}, shard_size=2)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = export_shar(cuts.subset(first=4), out, {"features": "numpy"}, shard_size=2)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # the same: kept
    assert [Path(p).name for p in again["cuts"]] == ["cuts.000000.jsonl.gz", "cuts.000001.jsonl.gz"]
    assert "reusing it" in caplog.text
    export_shar(cuts, out, {"features": "numpy"}, shard_size=2)  # more cuts: written again
    assert [c.id for c in SharCuts([out], "features", shuffle=False, seed=0).cuts] == \
        [c.id for c in cuts]
    assert "(changed: cuts_sha256, num_cuts): making it again" in caplog.text
    export_shar(cuts, out, {"features": "numpy"}, shard_size=3)  # another shard size
    assert len(shar_fields(out)["cuts"]) == 3 and "(changed: shard_size)" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shar", "shar.fingerprint.json"]


def test_shard_order_is_a_function_of_seed_and_epoch_only(shar_dir):
    def order(shar, epoch):
        shar.set_epoch(epoch)
        return [c.id for c in shar.cuts]

    shar = SharCuts([shar_dir], "features", shuffle=True, seed=5)
    orders = [order(shar, epoch) for epoch in range(4)]
    again = SharCuts([shar_dir], "features", shuffle=True, seed=5)
    assert [order(again, epoch) for epoch in (3, 1, 0, 2)] == [orders[i] for i in (3, 1, 0, 2)]
    assert len({tuple(o) for o in orders}) > 1  # shards move between epochs
    assert all(sorted(o) == sorted(orders[0]) for o in orders)
    shar.set_epoch(2)
    assert [c.id for c in shar.manifests] == orders[2]  # manifests follow the same order
    # every pass within an epoch reads its order (lhotse's reader counts its own passes)
    assert [c.id for c in shar.cuts] == [c.id for c in shar.cuts] == orders[2]
    assert [c.id for c in shar.manifests] == orders[2]


def test_a_resumed_shar_epoch_yields_the_remaining_batches_with_workers(prepared, shar_dir):
    """With DataLoader workers the sampler is iterated twice per epoch (and a resumed epoch
    skips batches first, reading the whole small corpus): the shards must keep their order."""
    from asr.data.epochs import EpochBatches

    cfg = DataConfig(max_duration=3.0, max_cut_duration=2.5, num_buckets=2, shuffle=True,
                     drop_last=False, num_workers=1, seed=5)
    shar = SharCuts([shar_dir], "features", shuffle=True, seed=5)
    batches = EpochBatches(shar.cuts, cfg, CharEncoder(), shar=shar)
    full = [b.cut_ids for b in batches(2, 0)]
    assert len(full) > 3
    for skip in (1, 3):
        assert [b.cut_ids for b in batches(2, skip)] == full[skip:]


def test_batches_from_shar_equal_batches_from_the_manifests(prepared, shar_dir):
    cfg = DataConfig(
        max_duration=3.0,
        max_cut_duration=2.5,
        num_buckets=2,
        shuffle=False,
        drop_last=False,
        num_workers=0,
    )
    lazy = CutSet.from_jsonl_lazy(prepared["fbank"]["train-clean-5"])
    shar = SharCuts([shar_dir], "features", shuffle=False, seed=0)
    encoder = CharEncoder()
    expected = list(make_dataloader(lazy, cfg, encoder, train=False))
    batches = list(
        make_dataloader(shar.cuts, cfg, encoder, train=False, bucket_cuts=shar.manifests)
    )
    assert len(batches) == len(expected) > 1
    for a, b in zip(expected, batches):
        assert a.cut_ids == b.cut_ids and a.texts == b.texts
        torch.testing.assert_close(a.feats, b.feats, rtol=0, atol=0)


def test_two_ranks_reading_the_same_shards_are_disjoint_and_cover(prepared, shar_dir):
    from asr.data.sampler import make_sampler

    cfg = DataConfig(
        max_duration=2.2, max_cut_duration=2.2, num_buckets=2, shuffle=True, drop_last=False, seed=3
    )
    per_rank = []
    for rank in (0, 1):
        shar = SharCuts([shar_dir], "features", shuffle=True, seed=3)
        sampler = make_sampler(
            shar.cuts, cfg, train=True, rank=rank, world_size=2, bucket_cuts=shar.manifests
        )
        sampler.set_epoch(1)
        shar.set_epoch(1)
        per_rank.append([c.id for batch in sampler for c in batch])
    assert per_rank[0] and per_rank[1] and not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(c.id for c in _train_cuts(prepared))


def test_a_failed_export_leaves_nothing_behind(prepared, tmp_path):
    from lhotse.utils import fastcopy

    cuts = list(_train_cuts(prepared))
    gone = fastcopy(cuts[3].features, storage_path=str(tmp_path / "gone"))
    cuts[3] = fastcopy(cuts[3], features=gone)
    with pytest.raises(DataError, match=rf"cut {cuts[3].id!r} \(features .*gone, audio"):
        export_shar(CutSet.from_cuts(cuts), tmp_path / "out", {"features": "lilcom"}, shard_size=2)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_a_corrupt_feature_entry_is_named_with_its_cut(prepared, tmp_path):
    """lilcom's own error ('Length of string was too short') names neither cut nor archive."""
    from lhotse.utils import fastcopy

    cuts = list(_train_cuts(prepared))
    bad = fastcopy(cuts[2].features, storage_key="999999999,100")
    cuts[2] = fastcopy(cuts[2], features=bad)
    with pytest.raises(DataError, match=rf"cut {cuts[2].id!r} \(features .*\.lca"):
        export_shar(CutSet.from_cuts(cuts), tmp_path / "out", {"features": "lilcom"}, shard_size=2)


def test_cmvn_statistics_of_filtered_shar_training_cuts(prepared, shar_dir):
    """Training from Shar with ``input_norm: global_cmvn`` gets its statistics from the lazy,
    filtered Shar cuts (no length): those of the first cuts of the stream."""
    from asr.data.filtering import filter_cuts
    from asr.features.cmvn import compute_cmvn_stats

    shar = SharCuts([shar_dir], "features", shuffle=True, seed=5)
    kept, _ = filter_cuts(shar.manifests, CharEncoder(), lambda n: n, apply_to=shar.cuts)
    mean, std = compute_cmvn_stats(kept, max_cuts=3)
    frames = np.concatenate([c.load_features() for c in list(shar.cuts)[:3]])
    np.testing.assert_allclose(mean.numpy(), frames.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std.numpy(), frames.std(0), rtol=1e-4, atol=1e-4)


def test_a_second_export_of_the_same_directory_is_refused_while_one_runs(prepared, tmp_path,
                                                                         monkeypatch):
    """Two exports of one directory shared the staging directory ``<output>.tmp``: the second
    removed the first's and wrote its own there, and the first then published the second's
    half-written shards as ``<output>`` and stamped them with its fingerprint, so every later run
    reused them. Now the staging directory is locked: the second export fails at once, naming
    the directory, and the first publishes its own complete shards."""
    import threading

    cuts = _train_cuts(prepared)
    out = tmp_path / "shar"
    real_to_shar = CutSet.to_shar
    second_writing, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def second_export():
        try:
            export_shar(cuts.subset(first=4), out, {"features": "numpy"}, shard_size=2)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            errors.append(err)
        finally:
            second_writing.set()

    def to_shar(self, tmp, **kwargs):
        if threading.current_thread() is not threading.main_thread():  # the second export
            (Path(tmp) / "cuts.000000.jsonl.gz").write_bytes(b"")  # half-written shards
            second_writing.set()
            release.wait(30)
            raise OSError("its staging directory went away")
        written = real_to_shar(self, tmp, **kwargs)
        second = threading.Thread(target=second_export)
        second.start()
        second_writing.wait(30)  # the second export is writing (or has given up)
        return written

    monkeypatch.setattr(CutSet, "to_shar", to_shar)
    try:
        export_shar(cuts, out, {"features": "numpy"}, shard_size=2)
    finally:
        release.set()
    monkeypatch.undo()
    assert [c.id for c in SharCuts([out], "features", shuffle=False, seed=0).cuts] == \
        [c.id for c in cuts]
    assert len(errors) == 1 and isinstance(errors[0], FileExistsError)
    assert "being written by another process" in str(errors[0]) and str(out) in str(errors[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shar", "shar.fingerprint.json"]
