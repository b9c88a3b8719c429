"""A globally shuffled training manifest: batches mix parts and speeds from the first batch on."""

from __future__ import annotations

import gzip
import itertools
import logging
import re
import time

import pytest
from lhotse import CutSet
from lhotse.testing.dummies import dummy_cut

from asr.data.config import DataConfig
from asr.data.librispeech import write_shuffled_cuts
from asr.data.sampler import make_sampler

PARTS = ("clean-100", "clean-360", "other-500")
SPEEDS = ("sp1.0", "sp0.9", "sp1.1")
PER_BLOCK = 200  # cuts per part and speed, written back to back as prepare.sh's fbank stage does


def _part_manifests(tmp_path):
    paths = []
    for p, part in enumerate(PARTS):
        cuts = [dummy_cut(p * 10_000 + s * 1000 + i, duration=1.0 + (i % 7) / 10)
                .with_id(f"{part}~{speed}~{i}")
                for s, speed in enumerate(SPEEDS) for i in range(PER_BLOCK)]
        path = tmp_path / f"librispeech_cuts_train-{part}.jsonl.gz"
        CutSet.from_cuts(cuts).to_file(path)
        paths.append(path)
    return paths


def _longest_run(cuts_in_batches, key) -> int:
    keys = [key(cut_id) for cut_id in cuts_in_batches]
    return max(len(list(group)) for _, group in itertools.groupby(keys))


def _first_epoch(manifest) -> list[str]:
    cfg = DataConfig(max_duration=20.0, max_cut_duration=2.0, num_buckets=4, buffer_size=500)
    sampler = make_sampler(CutSet.from_jsonl_lazy(manifest), cfg, train=True, rank=0,
                           world_size=1)
    sampler.set_epoch(1)
    return [cut.id for batch in sampler for cut in batch]


def test_shuffled_manifest_interleaves_parts_and_speeds(tmp_path):
    parts = _part_manifests(tmp_path)
    out = tmp_path / "librispeech_cuts_train-all-shuf.jsonl.gz"
    assert write_shuffled_cuts(parts, out, seed=3) == len(PARTS) * len(SPEEDS) * PER_BLOCK
    ids = _first_epoch(out)
    assert len(set(ids)) == len(ids) > 0.9 * len(PARTS) * len(SPEEDS) * PER_BLOCK
    part = lambda cut_id: cut_id.split("~")[0]  # noqa: E731
    speed = lambda cut_id: cut_id.split("~")[1]  # noqa: E731
    # N = 20: in a random order a run of 20 cuts of one of 3 parts has probability ~1e-6
    assert _longest_run(ids, part) <= 20 and _longest_run(ids, speed) <= 20
    # the parts concatenated as they were written: a 500-cut buffer holds one block at a time
    unshuffled = tmp_path / "unshuffled.jsonl.gz"
    with gzip.open(unshuffled, "wb") as f:
        for path in parts:
            with gzip.open(path, "rb") as g:
                f.write(g.read())
    assert _longest_run(_first_epoch(unshuffled), part) > 100


def test_shuffle_is_seeded_and_keeps_every_line(tmp_path):
    parts = _part_manifests(tmp_path)
    a, b, c = (tmp_path / f"{n}.jsonl.gz" for n in "abc")
    write_shuffled_cuts(parts, a, seed=1)
    write_shuffled_cuts(parts, b, seed=1)
    write_shuffled_cuts(parts, c, seed=2)
    assert a.read_bytes() != c.read_bytes()
    lines = lambda p: gzip.open(p, "rb").read().splitlines()  # noqa: E731
    assert lines(a) == lines(b) and sorted(lines(a)) == sorted(lines(c))
    assert sorted(lines(a)) == sorted(line for p in parts for line in lines(p))


def test_each_input_is_decompressed_once(tmp_path, monkeypatch):
    """The first-line check and the read were two passes, each decompressing the input."""
    parts = _part_manifests(tmp_path)
    opened = []
    real_open = gzip.open

    def counting_open(path, mode="rb", *args, **kwargs):
        if "r" in mode:
            opened.append(path)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(gzip, "open", counting_open)
    write_shuffled_cuts(parts, tmp_path / "shuf.jsonl.gz", seed=1)
    assert opened == parts


def test_a_rerun_writes_the_same_bytes(tmp_path, monkeypatch):
    """prepare.sh stage 3 writes the shuffled manifest on every run, and `asr shar` (run.sh
    stage 6) keeps its shards while that manifest has the same sha256: the gzip header's time
    made a rerun on the same cuts rewrite every shard."""
    parts = _part_manifests(tmp_path)
    out = tmp_path / "shuf.jsonl.gz"
    write_shuffled_cuts(parts, out, seed=1)
    first = out.read_bytes()
    later = time.time() + 3600.0
    monkeypatch.setattr(time, "time", lambda: later)  # the rerun an hour later
    write_shuffled_cuts(parts, out, seed=1)
    assert out.read_bytes() == first


def test_a_manifest_listed_twice_is_kept_twice_and_its_repeats_counted(tmp_path, caplog):
    """Oversampling by listing a manifest twice, as in data.train_cuts: every cut is written
    twice (training then names each repeat <id>_repeat<k>, with its own augmentation), and the
    log says so; a line that is no cut is named by its number, not written."""
    part = _part_manifests(tmp_path)[0]
    out = tmp_path / "twice.jsonl.gz"
    caplog.set_level(logging.INFO)
    assert write_shuffled_cuts([part, part], out, seed=1) == 2 * len(SPEEDS) * PER_BLOCK
    ids = [c.id for c in CutSet.from_file(out)]
    assert sorted(ids) == sorted(2 * [c.id for c in CutSet.from_file(part)])
    assert (f"{len(SPEEDS) * PER_BLOCK} cut ids occur more than once in the manifests shuffled "
            f"into {out} ({len(SPEEDS) * PER_BLOCK} repeats)") in caplog.text
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(gzip.open(part, "rb").readline() + b"\n{not json\n")
    with pytest.raises(ValueError, match=re.escape(f"{broken}:3: not a JSON cut")):
        write_shuffled_cuts([broken], tmp_path / "never.jsonl.gz")
    assert not (tmp_path / "never.jsonl.gz").exists()


def test_shuffle_reads_by_the_bytes_and_writes_by_the_output_name(tmp_path):
    """Inputs are read as gzip when they are, whatever their name (a gzip ``.jsonl`` was 'not
    UTF-8', a plain ``.jsonl.gz`` 'not a gzipped file'); the output is gzip-compressed only
    when its name ends in ``.gz`` (a ``.jsonl`` output was gzip, which lhotse then read as text)."""
    cuts = CutSet.from_cuts([dummy_cut(i) for i in range(5)])
    cuts.to_file(tmp_path / "a.jsonl.gz")
    compressed = tmp_path / "gzip.jsonl"
    compressed.write_bytes((tmp_path / "a.jsonl.gz").read_bytes())
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_bytes(gzip.decompress(compressed.read_bytes()))
    out = tmp_path / "out.jsonl"
    assert write_shuffled_cuts([compressed, plain], out, seed=1) == 10
    assert not out.read_bytes().startswith(b"\x1f\x8b")
    assert sorted(c.id for c in CutSet.from_jsonl_lazy(out)) == sorted(2 * [c.id for c in cuts])
    write_shuffled_cuts([compressed, plain], tmp_path / "out.jsonl.gz", seed=1)
    assert gzip.decompress((tmp_path / "out.jsonl.gz").read_bytes()) == out.read_bytes()


def test_inputs_whose_last_line_has_no_newline_lose_no_cut(tmp_path):
    """A hand-written manifest may end without a newline: its last cut must not run into the
    line shuffled after it."""
    inputs = []
    for p in range(2):
        cuts = CutSet.from_cuts(dummy_cut(10 * p + i).with_id(f"p{p}-{i}") for i in range(5))
        path = tmp_path / f"part{p}.jsonl"
        cuts.to_file(path)
        path.write_bytes(path.read_bytes().rstrip(b"\n"))
        inputs.append(path)
    output = tmp_path / "shuffled.jsonl"
    assert write_shuffled_cuts(inputs, output, seed=3) == 10
    lines = output.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 11
    assert sorted(c.id for c in CutSet.from_jsonl_lazy(output)) == sorted(
        f"p{p}-{i}" for p in range(2) for i in range(5))
