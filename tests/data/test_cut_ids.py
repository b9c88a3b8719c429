"""Repeated cut ids: an error naming the file, the id and both lines in an evaluation set; in
training, repeats (oversampling) renamed <id>_repeat<k> so each copy is augmented on its own."""

from __future__ import annotations

import gzip
import json
import logging
import re
from types import SimpleNamespace

import pytest
import torch
from lhotse import CutSet
from librispeech_tree import CharEncoder

from asr.data.config import DataConfig, SpecAugmentConfig
from asr.data.cut_ids import DuplicateIdError, Repeats, load_eval_cuts, manifest_ids
from asr.data.epochs import EpochBatches
from asr.data.librispeech import load_test_part
from asr.data.sampler import lazy_view
from asr.data.shar import export_shar
from asr.encoders.subsampling import subsampled_length
from asr.experiment import ExperimentConfig
from asr.run.train import _load_filtered, _load_shar

MODEL = SimpleNamespace(encoder=SimpleNamespace(output_length=subsampled_length))


def _lines(path) -> list[bytes]:
    with gzip.open(path, "rb") as f:
        return f.readlines()


def _write(path, lines: list[bytes]):
    with gzip.open(path, "wb") as f:
        f.writelines(lines)
    return path


def _train_config(prepared: dict, **kw) -> DataConfig:
    base = dict(manifest_dir=prepared["root"] / "fbank", max_duration=30.0, num_buckets=1,
                num_workers=0, max_cut_duration=20.0, drop_last=False,
                spec_augment=SpecAugmentConfig(time_warp_factor=0, probability=1.0))
    base.update(kw)
    return DataConfig(**base)


def test_a_test_set_that_repeats_an_id_is_refused_naming_file_id_and_lines(prepared, tmp_path):
    lines = _lines(prepared["fbank"]["dev-clean-2"])
    repeated = re.search(rb'"id": "([^"]+)"', lines[0]).group(1).decode()
    dup = _write(tmp_path / "librispeech_cuts_dev-clean-2.jsonl.gz", [*lines, lines[0]])
    with pytest.raises(DuplicateIdError) as err:
        load_test_part(tmp_path, "dev-clean-2")
    assert f"cut id {repeated!r}" in str(err.value)
    assert f"lines 1 and {len(lines) + 1} of {dup}" in str(err.value)
    # across the files of one set (the dev manifests of a training run)
    one = _write(tmp_path / "one.jsonl.gz", lines)
    other = _write(tmp_path / "other.jsonl.gz", [b"\n", lines[0]])  # blank lines count
    with pytest.raises(DuplicateIdError, match=re.escape(f"{one} line 1 and {other} line 2")):
        load_eval_cuts(tmp_path, [one.name, other.name])
    assert len(load_test_part(prepared["root"] / "fbank", "dev-clean-2")) == len(lines)


def test_an_evaluation_set_is_loaded_eager_as_lhotse_reads_it(prepared):
    """Its one read (the ids checked on the way) gives the cuts lhotse's reader gives, in
    memory: a caller decodes them without reading the manifest again."""
    paths = [prepared["fbank"][part] for part in ("dev-clean-2", "train-clean-5")]
    cuts = load_eval_cuts(paths[0].parent, [path.name for path in paths])
    assert not cuts.is_lazy
    expected = [cut for path in paths for cut in CutSet.from_file(path)]
    assert [cut.to_dict() for cut in cuts] == [cut.to_dict() for cut in expected]


def test_a_manifest_listed_twice_trains_two_differently_augmented_copies(prepared, caplog):
    """Every augmentation draw is seeded from the cut id: the second copy under the same id was
    masked, warped and perturbed exactly as the first in every epoch."""
    name = prepared["fbank"]["train-clean-5"].name
    data = _train_config(prepared, train_cuts=(name, name))
    caplog.set_level(logging.INFO)
    kept = _load_filtered(ExperimentConfig(data=data), MODEL, data.train_cuts, CharEncoder(),
                          "training", train=True)
    originals = [c.id for c in CutSet.from_file(prepared["fbank"]["train-clean-5"])]
    assert [c.id for c in kept] == originals + [f"{i}_repeat1" for i in originals]
    assert "8 cut ids occur more than once in the training manifests (8 repeats)" in caplog.text
    feats = {}
    for batch in EpochBatches(kept, data, CharEncoder())(1, 0):
        for cut_id, row, length in zip(batch.cut_ids, batch.feats, batch.feat_lens.tolist()):
            feats[cut_id] = row[:length]
    assert len(feats) == 2 * len(originals)
    for cut_id in originals:
        assert not torch.equal(feats[cut_id], feats[f"{cut_id}_repeat1"]), cut_id


def test_repeats_in_shar_are_renamed_as_they_stream(prepared, tmp_path):
    """A Shar directory made of a manifest listed twice: the lazy training stream names the
    repeats, alike on every pass, without loading the cuts."""
    manifest = prepared["fbank"]["train-clean-5"]
    shar = tmp_path / "shar"
    export_shar([manifest, manifest], shar, {"features": "numpy"}, shard_size=3, progress=False)
    data = _train_config(prepared, train_shar_dirs=(shar,), shuffle=True)
    kept, reader = _load_shar(ExperimentConfig(data=data), MODEL, CharEncoder())
    assert kept.is_lazy
    originals = [c.id for c in CutSet.from_file(manifest)]
    first = [c.id for c in kept]
    assert sorted(first) == sorted(originals + [f"{i}_repeat1" for i in originals])
    assert [c.id for c in kept] == first  # a second pass over one epoch: the same names
    reader.set_epoch(2)  # another shard order: the first copy met keeps the id
    assert sorted(c.id for c in kept) == sorted(first)


def test_repeats_rename_eager_and_lazy_cuts_alike():
    from lhotse.testing.dummies import dummy_cut

    cuts = [dummy_cut(i).with_id(name) for i, name in enumerate(["a", "b", "a", "c", "a", "b"])]
    repeats = Repeats.of_ids(c.id for c in cuts)
    assert repeats.copies == 3 and len(repeats.keys) == 2
    expected = ["a", "b", "a_repeat1", "c", "a_repeat2", "b_repeat1"]
    assert [c.id for c in repeats.rename(CutSet(cuts))] == expected
    lazy = repeats.rename(lazy_view(CutSet(cuts)))
    assert lazy.is_lazy and [c.id for c in lazy] == expected == [c.id for c in lazy]
    unique = CutSet([dummy_cut(i).with_id(f"u{i}") for i in range(3)])
    assert Repeats.of_ids(c.id for c in unique).rename(unique) is unique


def test_a_repeat_is_never_renamed_to_the_id_of_a_real_cut():
    """A real cut named ``a_repeat1`` and a repeated ``a``: the copy takes the next free
    suffix, so that no two training cuts share an id (and their augmentation draws)."""
    from lhotse.testing.dummies import dummy_cut

    names = ["a", "a_repeat1", "a", "a", "a_repeat1"]
    cuts = [dummy_cut(i).with_id(name) for i, name in enumerate(names)]
    repeats = Repeats.of_ids(names)
    expected = ["a", "a_repeat1", "a_repeat2", "a_repeat3", "a_repeat1_repeat1"]
    assert [c.id for c in repeats.rename(CutSet(cuts))] == expected
    assert [c.id for c in repeats.rename(lazy_view(CutSet(cuts)))] == expected


def test_shar_repeats_skip_the_ids_of_real_cuts_in_its_streamed_manifests(prepared, tmp_path):
    """Shar's ids are known from its shards' manifests alone (the cuts stream): a real cut
    named ``<id>_repeat1`` there is not the name of ``<id>``'s repeat."""
    manifest = prepared["fbank"]["train-clean-5"]
    lines = _lines(manifest)
    first = re.search(rb'"id": "([^"]+)"', lines[0]).group(1).decode()
    taken = _write(tmp_path / "taken.jsonl.gz", [lines[0].replace(
        f'"id": "{first}"'.encode(), f'"id": "{first}_repeat1"'.encode())])
    shar = tmp_path / "shar"
    export_shar([manifest, manifest, taken], shar, {"features": "numpy"}, shard_size=3,
                progress=False)
    data = _train_config(prepared, train_shar_dirs=(shar,), shuffle=True)
    kept, _ = _load_shar(ExperimentConfig(data=data), MODEL, CharEncoder())
    ids = [c.id for c in kept]
    assert len(set(ids)) == len(ids) == 2 * len(lines) + 1
    assert f"{first}_repeat2" in ids


def test_dev_cuts_of_any_duration_are_validated(prepared):
    """The duration limits are training's: a dev utterance longer than ``max_cut_duration`` (or
    shorter than ``min_cut_duration``) stays in the validation loss and dev WER, as in icefall;
    they were dropped."""
    name = prepared["fbank"]["dev-clean-2"].name
    durations = [cut.duration for cut in CutSet.from_file(prepared["fbank"]["dev-clean-2"])]
    lo, hi = min(durations), max(durations)
    assert lo < hi
    data = _train_config(prepared, dev_cuts=(name,), min_cut_duration=lo,
                         max_cut_duration=(lo + hi) / 2)
    cfg = ExperimentConfig(data=data)
    dev = _load_filtered(cfg, MODEL, data.dev_cuts, CharEncoder(), "dev")
    assert sorted(cut.duration for cut in dev) == sorted(durations)
    train = _load_filtered(cfg, MODEL, data.dev_cuts, CharEncoder(), "training", train=True)
    assert hi not in [cut.duration for cut in train]  # training keeps to the limits



def test_repeats_name_the_watched_ids_the_training_manifests_hold(tmp_path) -> None:
    """The one pass over the training ids (Shar's manifests too) says which dev ids they hold,
    for ``asr train``'s warning of dev cuts trained on."""
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in ("a", "b", "a", "c")))
    repeats = Repeats.of_ids((cut_id for _, cut_id in manifest_ids(path)),
                             watch=frozenset({"c", "a", "z"}))
    assert repeats.shared == ("a", "c") and repeats.copies == 1
    assert Repeats.of_ids(["a"]).shared == ()


def test_a_speed_copy_of_a_dev_cut_in_the_training_manifests_is_a_dev_cut_trained_on(prepared):
    """Training manifests of speed copies (``<id>_sp0.9``, as ``asr prepare fbank
    --speed-perturb`` writes them) of dev cuts trained on the dev cuts perturbed without a
    word: only a training cut of the dev id itself was counted. A cut whose id only looks like
    a copy's, without a speed transform, is none."""
    dev = list(CutSet.from_file(prepared["manifests"]["dev-clean-2"]))[:3]
    train = [dev[0].perturb_speed(0.9), dev[1].perturb_speed(1.1), dev[2].with_id("x_sp0.9")]
    watch = frozenset({dev[0].id, dev[1].id, "x"})
    assert Repeats.of_cuts(train, watch).shared == tuple(sorted([dev[0].id, dev[1].id]))
    assert Repeats.of_ids([c.id for c in train], watch).shared == ()
