"""Lhotse Shar: export round trip (features, audio), errors naming the directory/field/cut,
per-epoch shard order that does not depend on how often the reader was iterated, and batches
from Shar equal to batches from the manifests."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lhotse import CutSet, MonoCut
from lhotse.dataset.sampling.base import TimeConstraint
from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets
from librispeech_tree import CharEncoder

import asr.run.train as train
from asr.data.config import DataConfig
from asr.data.dataset import DataError, make_dataloader
from asr.data.epochs import EpochBatches
from asr.data.fbank import speed_perturb_cuts
from asr.data.filtering import SPEED_COPY_FIELD, FilterStats, cut_files, filter_cuts
from asr.data.shar import SharCuts, export_shar, shar_fields
from asr.encoders.subsampling import subsampled_length
from asr.experiment import ExperimentConfig


def _train_cuts(prepared: dict) -> CutSet:
    return CutSet.from_file(prepared["fbank"]["train-clean-5"])


def _written(cuts, directory: Path) -> Path:
    """``cuts`` written as the manifest ``directory/cuts.jsonl.gz`` (export_shar reads files)."""
    CutSet.from_cuts(cuts).to_file(directory / "cuts.jsonl.gz")
    return directory / "cuts.jsonl.gz"


@pytest.fixture(scope="module")
def shar_dir(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("shar") / "train"
    written = export_shar([prepared["fbank"]["train-clean-5"]], out, {"features": "numpy"},
                          shard_size=2)
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
    export_shar([prepared["manifests"]["dev-clean-2"]], tmp_path / "audio", {"recording": "flac"},
                shard_size=10)
    read = list(SharCuts([tmp_path / "audio"], "recording", shuffle=True, seed=1).cuts)
    assert [c.id for c in read] == [c.id for c in cuts]
    for a, b in zip(cuts, read):
        np.testing.assert_array_equal(a.load_audio(), b.load_audio())  # flac is lossless


def test_messages_name_the_shar_shard_of_a_cut(prepared, shar_dir, tmp_path):
    """A cut read from Shar named its data as ``audio `` (the shard's source is empty), so a
    cut refused by the filter or failing to load in training named no file; it is named by
    its shard's cut manifest."""
    export_shar([prepared["manifests"]["dev-clean-2"]], tmp_path / "audio", {"recording": "flac"},
                shard_size=10)
    [first, *_] = SharCuts([tmp_path / "audio"], "recording", shuffle=False, seed=0).manifests
    assert cut_files(first) == f"audio of Shar shard {tmp_path / 'audio' / 'cuts.000000.jsonl.gz'}"
    [first, *_] = SharCuts([shar_dir], "features", shuffle=False, seed=0).cuts
    assert cut_files(first).startswith(
        f"features of Shar shard {shar_dir / 'cuts.000000.jsonl.gz'}, audio /")


def test_export_and_read_errors_name_what_is_wrong(prepared, shar_dir, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")  # not a Shar directory: never replaced
    with pytest.raises(FileExistsError, match=r"data exists and is not a Shar directory .*notes"):
        export_shar([prepared["fbank"]["train-clean-5"]], tmp_path / "data", {"features": "numpy"})
    assert (tmp_path / "data" / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match=r"cut '.*' has no features"):
        export_shar([prepared["manifests"]["dev-clean-2"]], tmp_path / "x", {"features": "lilcom"})
    relative = dataclasses.replace(next(iter(_train_cuts(prepared))), id="moved")
    relative.features = dataclasses.replace(relative.features, storage_path="data/feats.lca")
    with pytest.raises(DataError, match=r"cut 'moved' .* data/feats.lca does not exist in the "
                       rf"working directory {re.escape(str(Path.cwd()))} \(a relative path"):
        export_shar([_written([relative], tmp_path)], tmp_path / "x", {"features": "lilcom"})
    with pytest.raises(FileNotFoundError, match=r"cut manifest .*nowhere.jsonl.gz does not exist"):
        export_shar([tmp_path / "nowhere.jsonl.gz"], tmp_path / "x", {"features": "lilcom"})
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.tmp").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SharCuts([tmp_path / "missing"], "features", shuffle=False, seed=0)
    with pytest.raises(ValueError, match=r"has no 'recording' shards \(it has \['features'\]\): "
                       r".*write it with `asr shar --fields recording=flac`, or set "
                       r"data.on_the_fly_feats: false"):
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
    first_4, all_8 = tmp_path / "first_4.jsonl.gz", tmp_path / "all_8.jsonl.gz"
    cuts.subset(first=4).to_file(first_4)
    cuts.to_file(all_8)
    out = tmp_path / "shar"
    export_shar([first_4], out, {"features": "numpy"}, shard_size=2)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = export_shar([first_4], out, {"features": "numpy"}, shard_size=2)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # the same: kept
    assert [Path(p).name for p in again["cuts"]] == ["cuts.000000.jsonl.gz", "cuts.000001.jsonl.gz"]
    assert "reusing it" in caplog.text
    export_shar([all_8], out, {"features": "numpy"}, shard_size=2)  # more cuts: written again
    assert [c.id for c in SharCuts([out], "features", shuffle=False, seed=0).cuts] == \
        [c.id for c in cuts]
    assert "(changed: manifests_sha256): making it again" in caplog.text
    export_shar([all_8], out, {"features": "numpy"}, shard_size=3)  # another shard size
    assert len(shar_fields(out)["cuts"]) == 3 and "(changed: shard_size)" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir() if "shar" in p.name) == [
        "shar", "shar.fingerprint.json"]


def _copy_features(prepared, tmp_path) -> Path:
    """The training cuts with their features copied to ``tmp_path/feats`` (a manifest naming
    them relative to ``tmp_path``, where the test runs), so that the test may change them."""
    from lhotse.utils import fastcopy

    cuts = _train_cuts(prepared)
    (tmp_path / "feats").mkdir()
    moved = []
    for cut in cuts:
        source = Path(cut.features.storage_path)
        target = Path("feats") / source.name
        if not (tmp_path / target).exists():
            (tmp_path / target).write_bytes(source.read_bytes())
        moved.append(fastcopy(cut, features=fastcopy(cut.features, storage_path=str(target))))
    CutSet.from_cuts(moved).to_file(tmp_path / "cuts.jsonl.gz")
    return tmp_path / "cuts.jsonl.gz"


def test_a_rerun_parses_no_cut_and_remakes_on_changed_data_or_directory(prepared, tmp_path,
                                                                        monkeypatch, caplog):
    """`asr shar` hashed every cut to decide whether its shards were current (minutes on
    LibriSpeech, to find nothing changed), and never looked at the data files, so shards of
    features recomputed in place were kept. The rerun now reads the manifests' bytes and stats
    the data files: no cut is parsed, and a data file rewritten (or one named relative to
    another working directory) makes the shards again."""
    import os

    import asr.data.shar as shar_module

    caplog.set_level(logging.INFO)
    monkeypatch.chdir(tmp_path)
    manifest = _copy_features(prepared, tmp_path)
    (archive,) = {Path(c.features.storage_path) for c in CutSet.from_file(manifest)}
    export_shar([manifest], "shar", {"features": "numpy"}, shard_size=4)
    stored = json.loads(Path("shar.fingerprint.json").read_text())
    assert stored["data_files"] == {str(archive): [archive.stat().st_size,
                                                   archive.stat().st_mtime_ns]}
    assert stored["cwd"] == str(tmp_path)  # the archive is named relative to it

    def no_parsing(*args, **kwargs):
        raise AssertionError("a cut was parsed")

    with monkeypatch.context() as patch:  # a current directory is kept without parsing a cut
        patch.setattr(shar_module, "_check_cuts", no_parsing)
        patch.setattr(MonoCut, "from_dict", staticmethod(no_parsing))
        export_shar([manifest], "shar", {"features": "numpy"}, shard_size=4)
    assert "reusing it" in caplog.text

    def rewrite(data: bytes, mtime_ns: int) -> None:
        atime_ns = archive.stat().st_atime_ns
        archive.write_bytes(data)
        os.utime(archive, ns=(atime_ns, mtime_ns))

    original, mtime_ns = archive.read_bytes(), archive.stat().st_mtime_ns
    for data, new_mtime_ns in ((original + bytes(16), mtime_ns),  # other size, same time
                               (original, mtime_ns + 1_000_000)):  # same size, other time
        rewrite(data, new_mtime_ns)
        caplog.clear()
        export_shar([manifest], "shar", {"features": "numpy"}, shard_size=4)
        assert "(changed: data_files): making it again" in caplog.text
    caplog.clear()
    export_shar([manifest], "shar", {"features": "numpy"}, shard_size=4)
    assert "reusing it" in caplog.text
    # what the check cannot see (documented): other bytes of the same size and time
    rewrite(original[:-1] + bytes([original[-1] ^ 1]), archive.stat().st_mtime_ns)
    export_shar([manifest], "shar", {"features": "numpy"}, shard_size=4)
    assert caplog.text.count("reusing it") == 2
    rewrite(original, archive.stat().st_mtime_ns)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative paths now name other files
    caplog.clear()
    with pytest.raises(DataError, match="feats"):
        export_shar([manifest], tmp_path / "shar", {"features": "numpy"}, shard_size=4)
    assert "(changed: cwd, data_files): making it again" in caplog.text
    assert (tmp_path / "shar").is_dir()  # a failed remake leaves the old shards


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


def test_a_filtered_view_keeps_data_and_manifests_one_stream_in_every_epoch(shar_dir):
    """``SharCuts.filter``/``map`` apply to both views, which share the readers: the shard
    order set on either one holds for both, and the manifests name the cuts the data has."""
    shar = SharCuts([shar_dir], "features", shuffle=True, seed=5)
    odd = {c.id for k, c in enumerate(shar.manifests) if k % 2}

    def even(cut) -> bool:
        return cut.id not in odd

    def marked(cut):
        return cut.with_id(f"{cut.id}!")

    view = shar.filter(even).map(marked)
    for owner, epoch in ((shar, 1), (view, 3), (shar, 0)):
        owner.set_epoch(epoch)
        order = [f"{c.id}!" for c in shar.cuts if c.id not in odd]
        assert [c.id for c in view.cuts] == [c.id for c in view.manifests] == order, epoch
    assert len(order) == len(list(shar.cuts)) - len(odd) > 0


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
        export_shar([_written(cuts, tmp_path)], tmp_path / "out", {"features": "lilcom"},
                    shard_size=2)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_a_corrupt_feature_entry_is_named_with_its_cut(prepared, tmp_path):
    """lilcom's own error ('Length of string was too short') names neither cut nor archive."""
    from lhotse.utils import fastcopy

    cuts = list(_train_cuts(prepared))
    bad = fastcopy(cuts[2].features, storage_key="999999999,100")
    cuts[2] = fastcopy(cuts[2], features=bad)
    with pytest.raises(DataError, match=rf"cut {cuts[2].id!r} \(features .*\.lca"):
        export_shar([_written(cuts, tmp_path)], tmp_path / "out", {"features": "lilcom"},
                    shard_size=2)


def test_cmvn_statistics_of_filtered_shar_training_cuts(prepared, shar_dir):
    """Training from Shar with ``input_norm: global_cmvn`` gets its statistics from the lazy,
    filtered Shar cuts (no length): those of the first cuts of the stream."""
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
    first_4 = _written(cuts.subset(first=4), tmp_path)
    out = tmp_path / "shar"
    real_to_shar = CutSet.to_shar
    second_writing, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def second_export():
        try:
            export_shar([first_4], out, {"features": "numpy"}, shard_size=2)
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
        export_shar([prepared["fbank"]["train-clean-5"]], out, {"features": "numpy"},
                    shard_size=2)
    finally:
        release.set()
    monkeypatch.undo()
    assert [c.id for c in SharCuts([out], "features", shuffle=False, seed=0).cuts] == \
        [c.id for c in cuts]
    assert len(errors) == 1 and isinstance(errors[0], FileExistsError)
    assert "being written by another process" in str(errors[0]) and str(out) in str(errors[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cuts.jsonl.gz", "shar",
                                                         "shar.fingerprint.json"]


def _corpus_with_cuts_the_filter_drops(prepared, tmp_path, odd_rate: bool
                                       ) -> tuple[Path, list[str]]:
    """Both prepared parts (11 cuts of 0.6 to 2.1 s) and cuts that a 2 s ``max_cut_duration``
    drops: copies of the 2.1 s cut (with ``odd_rate`` one at 8 kHz, a rate the features would
    refuse) and one with an empty transcript, as one manifest; and the ids that remain."""
    from lhotse.utils import fastcopy

    cuts = [c for part in ("train-clean-5", "dev-clean-2")
            for c in CutSet.from_file(prepared["fbank"][part])]
    longest = max(cuts, key=lambda c: c.duration)
    kept = [c.id for c in cuts if c is not longest]
    copies = [fastcopy(longest, id=f"long-{k}") for k in range(2)]
    slow = fastcopy(longest.features, sampling_rate=8000)
    if odd_rate:
        copies.append(fastcopy(longest, id="at-8-khz", features=slow,
                               recording=fastcopy(longest.recording, sampling_rate=8000)))
    silent = fastcopy(cuts[0].supervisions[0], text="")
    copies.append(fastcopy(cuts[0], id="no-text", supervisions=[silent]))
    return _written(cuts[:5] + copies + cuts[5:], tmp_path), kept


@pytest.mark.parametrize("odd_rate", [False, True])
def test_shar_and_manifests_train_on_the_same_filtered_cuts_checked_and_bucketed_alike(
        prepared, tmp_path, monkeypatch, odd_rate: bool):
    """One corpus, as a manifest and as Shar: the same filter statistics, the same training
    cuts, the same duration buckets and batches. The checks of the loader (sample rate) and the
    bucket estimate read the Shar manifests: they used to read them unfiltered, so a cut at
    8 kHz that the filter drops stopped the run, and dropped long cuts moved the buckets."""
    manifest, kept_ids = _corpus_with_cuts_the_filter_drops(prepared, tmp_path, odd_rate)
    shar_dir = tmp_path / "shar"
    export_shar([manifest], shar_dir, {"features": "numpy"}, shard_size=4, progress=False)
    stats = []

    def counting_filter(*args, **kwargs):
        kept, found = filter_cuts(*args, **kwargs)
        stats.append(found)
        return kept, found

    monkeypatch.setattr(train, "filter_cuts", counting_filter)
    data = DataConfig(manifest_dir=tmp_path, train_cuts=(manifest.name,), max_duration=2.5,
                      max_cut_duration=2.0, num_buckets=2, shuffle=False, drop_last=False,
                      num_workers=0)
    model = SimpleNamespace(encoder=SimpleNamespace(output_length=subsampled_length))
    from_manifest = train._load_filtered(ExperimentConfig(data=data), model, data.train_cuts,
                                         CharEncoder(), "training", train=True)
    data = dataclasses.replace(data, train_shar_dirs=(shar_dir,))
    from_shar, shar = train._load_shar(ExperimentConfig(data=data), model, CharEncoder())
    assert stats[0] == stats[1]
    assert stats[0].kept == len(kept_ids) and stats[0].dropped == 4 + odd_rate
    assert [c.id for c in from_shar] == [c.id for c in from_manifest] == kept_ids
    assert [c.id for c in shar.manifests] == kept_ids  # what the checks and buckets read

    expected = EpochBatches(from_manifest, data, CharEncoder())
    batches = EpochBatches(from_shar, data, CharEncoder(), shar=shar)  # raised on the 8 kHz cut
    bins = estimate_duration_buckets(from_manifest, num_buckets=2,
                                     constraint=TimeConstraint(max_duration=2.5))
    assert batches.loader.sampler.duration_bins == expected.loader.sampler.duration_bins == bins
    assert [b.cut_ids for b in batches(1, 0)] == [b.cut_ids for b in expected(1, 0)]


def test_speed_copies_in_shar_are_refused_for_on_the_fly_speed_perturbation(prepared, tmp_path):
    """Shar writes audio with its speed transform applied and lists none: the filter's refusal
    of on-the-fly perturbation on top of stored speed copies (0.9 twice: 0.81) saw none in a
    Shar export of a corpus with its copies. ``asr shar`` keeps the speed in the cut, and a
    Shar directory written by lhotse alone is judged by its recordings' ``_sp0.9`` ids; the
    export of the cuts without copies trains at every speed."""
    plain = CutSet.from_file(prepared["manifests"]["dev-clean-2"])
    copies = tmp_path / "copies"
    copies.mkdir()
    manifest = _written(speed_perturb_cuts(plain), copies)
    export_shar([manifest], tmp_path / "asr", {"recording": "flac"}, shard_size=4, progress=False)
    lhotse_only = tmp_path / "lhotse"
    lhotse_only.mkdir()
    CutSet.from_file(manifest).to_shar(lhotse_only, fields={"recording": "flac"}, shard_size=4,
                                       verbose=False)
    speeds = (1.0, 0.9, 1.1)
    first_copy = f"{plain[0].id}_sp0.9"
    for directory, transform in ((tmp_path / "asr", r"Speed\(factor=0\.9\)"),
                                 (lhotse_only, r"Speed\(factor=0\.9\), by its id")):
        shar = SharCuts([directory], "recording", shuffle=False, seed=0)
        with pytest.raises(ValueError, match=rf"cut '{first_copy}' .*is speed-perturbed already "
                                             rf"\({transform}: "):
            filter_cuts(shar.manifests, CharEncoder(), subsampled_length, apply_to=shar,
                        speed_factors=speeds)
        kept, stats = filter_cuts(shar.manifests, CharEncoder(), subsampled_length,
                                  apply_to=shar)  # no perturbation: the copies are cuts
        assert stats.kept == 3 * len(plain)
    export_shar([prepared["manifests"]["dev-clean-2"]], tmp_path / "plain", {"recording": "flac"},
                shard_size=4, progress=False)
    shar = SharCuts([tmp_path / "plain"], "recording", shuffle=False, seed=0)
    _, stats = filter_cuts(shar.manifests, CharEncoder(), subsampled_length, apply_to=shar,
                           speed_factors=speeds)
    assert stats == FilterStats(kept=len(plain))
    # every cut of asr shar says whether it is a copy: no recording id is guessed at
    assert [c.custom[SPEED_COPY_FIELD] for c in shar.manifests] == [None] * len(plain)


def test_a_shar_directory_that_is_a_file_is_named_so(tmp_path):
    """A Shar directory path that names a file was reported as not existing, though the user
    could see it there: the message says it is a file."""
    (tmp_path / "shar").write_text("not a directory\n")
    with pytest.raises(FileNotFoundError, match=r"Shar directory .*shar is a file, not a "
                                                r"directory$"):
        shar_fields(tmp_path / "shar")
    with pytest.raises(FileNotFoundError, match=r"Shar directory .*missing does not exist$"):
        shar_fields(tmp_path / "missing")
