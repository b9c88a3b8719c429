"""Preparation run again (a recipe's stage 1 / fbank stage re-run): outputs that still match their
inputs are reused, stale or half-written ones are made again."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording
from librispeech_tree import TREE, write_part

import asr.data.fbank
from asr.cli.main import main
from asr.data.fbank import compute_fbank_for_parts
from asr.data.librispeech import cuts_path, prepare_manifests
from asr.features.fbank import FbankConfig
from asr.fileio import output_lock
from asr.fingerprint import fingerprint_path
from asr.synth.synthesize import synthesize_corpus
from asr.synth.voices import VOICES

PART = "dev-clean-2"


def _texts(manifests: dict[str, Path]) -> dict[str, str]:
    return {c.id: c.supervisions[0].text for c in CutSet.from_file(manifests[PART])}


def test_cached_manifests_are_reused_while_the_corpus_is_unchanged(corpus, tmp_path, caplog):
    corpus_dir, _ = corpus
    out = tmp_path / "manifests"
    prepare_manifests(corpus_dir, out, [PART])
    recordings = out / f"librispeech_recordings_{PART}.jsonl.gz"
    before = recordings.stat().st_mtime_ns
    prepare_manifests(corpus_dir, out, [PART])
    assert recordings.stat().st_mtime_ns == before
    assert "preparing them again" not in caplog.text


def test_manifests_follow_a_corpus_that_changed(corpus, tmp_path, caplog):
    """An extraction finished after a first stage 1, a corrected transcript: both used to be
    ignored (lhotse reused the manifests it had written before)."""
    corpus_dir, utts = corpus
    out = tmp_path / "manifests"
    assert len(_texts(prepare_manifests(corpus_dir, out, [PART]))) == len(utts[PART])
    write_part(corpus_dir, PART, {("2002", "40"): [(0.7, "A LATE CHAPTER")]}, seed=9)
    trans = corpus_dir / PART / "2001" / "30" / "2001-30.trans.txt"
    trans.write_text(trans.read_text().replace("TEST ONE", "TEST WON"))
    texts = _texts(prepare_manifests(corpus_dir, out, [PART]))
    assert texts["2002-40-0000"] == "A LATE CHAPTER" and texts["2001-30-0000"] == "TEST WON"
    assert len(texts) == len(utts[PART]) + 1
    assert "differ from the corpus's 4 utterances" in caplog.text
    lower = _texts(prepare_manifests(corpus_dir, out, [PART], normalize_text="lower"))
    assert lower["2001-30-0000"] == "test won"


def test_a_manifest_cut_short_by_a_kill_is_written_again(corpus, tmp_path, caplog):
    corpus_dir, utts = corpus
    out = tmp_path / "manifests"
    prepare_manifests(corpus_dir, out, [PART])
    recordings = out / f"librispeech_recordings_{PART}.jsonl.gz"
    recordings.write_bytes(recordings.read_bytes()[:-20])  # a gzip stream without its end
    texts = _texts(prepare_manifests(corpus_dir, out, [PART]))
    assert len(texts) == len(utts[PART]) and "unreadable" in caplog.text
    with gzip.open(recordings, "rt") as f:
        assert len(f.readlines()) == len(utts[PART])


def test_stored_features_follow_their_input_and_speed_perturbation(corpus, tmp_path, caplog):
    """`run.sh --stage 2 --speed-perturb true` after a run without it used to keep the cuts without
    speed copies; a part whose manifests grew kept its old features."""
    corpus_dir, _ = corpus
    part = "train-clean-5"
    manifests, fbank = tmp_path / "manifests", tmp_path / "fbank"
    prepare_manifests(corpus_dir, manifests, [part])
    n = sum(len(v) for v in TREE[part].values())
    out = compute_fbank_for_parts(manifests, fbank, [part])[part]
    assert len(CutSet.from_file(out)) == n
    compute_fbank_for_parts(manifests, fbank, [part], perturb_parts=[part])
    cuts = CutSet.from_file(out)
    assert len(cuts) == 3 * n
    assert "with speed copies: computing part train-clean-5 again" in caplog.text
    assert all(c.has_features for c in cuts)
    before = out.stat().st_mtime_ns  # the same request again: reused
    compute_fbank_for_parts(manifests, fbank, [part], perturb_parts=[part])
    assert out.stat().st_mtime_ns == before
    write_part(corpus_dir, part, {("1003", "50"): [(0.8, "ONE MORE")]}, seed=7)
    prepare_manifests(corpus_dir, manifests, [part])
    compute_fbank_for_parts(manifests, fbank, [part], perturb_parts=[part])
    ids = {c.id for c in CutSet.from_file(out)}
    assert len(ids) == 3 * (n + 1) and "1003-50-0000_sp1.1" in ids


def _features(manifest: Path) -> dict:
    return {c.id: c.load_features() for c in CutSet.from_file(manifest)}


def test_a_killed_recomputation_keeps_the_part_it_replaces(prepared, tmp_path, monkeypatch):
    """--overwrite removed the manifest and rewrote the archive in place: a run killed while it
    wrote lost the part, and left half an archive under the name its manifest reads. The new
    archive is written under a temporary name: the earlier part stays whole, and the temporary
    a killed run leaves is removed by the next run."""
    manifests, fbank = prepared["root"] / "manifests", tmp_path / "fbank"
    out = compute_fbank_for_parts(manifests, fbank, [PART])[PART]
    archive = fbank / f"librispeech_feats_{PART}.lca"
    before, archived = _features(out), archive.read_bytes()

    def killed(cuts, storage_path, *args, **kwargs):
        Path(storage_path).write_bytes(b"half an archive")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(asr.data.fbank, "compute_fbank_for_cuts", killed)
        with pytest.raises(KeyboardInterrupt):
            compute_fbank_for_parts(manifests, fbank, [PART], overwrite=True)
    assert archive.read_bytes() == archived
    after = _features(out)
    assert after.keys() == before.keys() and all((after[k] == before[k]).all() for k in before)
    assert not [p.name for p in fbank.iterdir() if p.name.startswith(".")]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    left = fbank / f".{archive.name}.tmp-{dead}.lca"  # what a SIGKILLed run leaves
    left.write_bytes(b"half an archive")
    compute_fbank_for_parts(manifests, fbank, [PART], overwrite=True)
    assert not left.exists() and archive.read_bytes() == archived


def test_a_second_run_on_a_part_is_refused(prepared, tmp_path, caplog):
    """`asr prepare fbank` took no lock: two runs on one part both wrote its archive and
    manifest, one's manifest over the other's archive. The part's manifest is locked before any
    part is computed; a refused run (exit 2) computes none."""
    fbank = tmp_path / "fbank"
    args = ["prepare", "fbank", "--manifest-dir", str(prepared["root"] / "manifests"),
            "--output-dir", str(fbank), "--parts", "train-clean-5", PART, PART]
    busy = fbank / f"librispeech_cuts_{PART}.jsonl.gz"
    with output_lock(busy):  # as another run holds it (flock: per open file, not process)
        assert main(args) == 2
        assert f"{busy} is being written by another process" in caplog.text
        assert not [p for p in fbank.iterdir() if not p.name.endswith(".lock")]
    assert main(args) == 0  # the part given twice: locked and computed once
    assert sorted(p.name for p in fbank.iterdir()) == sorted(
        f"librispeech_{kind}_{part}{ext}" for part in ("train-clean-5", PART)
        for kind, ext in (("cuts", ".jsonl.gz"), ("cuts", ".jsonl.gz.fingerprint.json"),
                          ("feats", ".lca")))


def test_a_cut_manifest_is_complete_or_absent(corpus, tmp_path, monkeypatch):
    """The cuts of a part were written in place: a kill left a part of a manifest under the
    name stage 2 reads."""
    import os

    corpus_dir, _ = corpus
    out = tmp_path / "manifests"

    def refused(src, dst):
        raise OSError("rename refused")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", refused)
        with pytest.raises(OSError, match="rename refused"):
            prepare_manifests(corpus_dir, out, [PART])
    assert not list(out.glob("librispeech_cuts_*")) and not list(out.glob(".*tmp*"))


def test_a_second_manifests_run_on_a_part_is_refused(corpus, tmp_path, caplog):
    """`asr prepare manifests` took no lock: lhotse writes a part's recordings and supervisions
    in place, so two runs on one part could each read the other's half-written manifest. Each
    part is locked on its cut manifest before anything is read; a refused run (exit 2) writes
    nothing."""
    corpus_dir, _ = corpus
    out = tmp_path / "manifests"
    args = ["prepare", "manifests", "--corpus-dir", str(corpus_dir), "--output-dir", str(out),
            "--parts", PART]
    busy = out / f"librispeech_cuts_{PART}.jsonl.gz"
    with output_lock(busy):  # as another run holds it
        assert main(args) == 2
        assert f"{busy} is being written by another process" in caplog.text
        assert not [p for p in out.iterdir() if not p.name.endswith(".lock")]
    assert main(args) == 0 and busy.is_file()


def test_a_second_shuffle_into_one_output_is_refused(prepared, tmp_path, caplog):
    """`asr prepare shuffle` is locked on its output as the other outputs are (exit 2)."""
    source = prepared["root"] / "manifests" / f"librispeech_cuts_{PART}.jsonl.gz"
    out = tmp_path / "shuf" / "cuts.jsonl.gz"
    args = ["prepare", "shuffle", "--cuts", str(source), "--output", str(out)]
    with output_lock(out):
        assert main(args) == 2
        assert f"{out} is being written by another process" in caplog.text
        assert not out.exists()
    assert main(args) == 0 and out.is_file()


def test_stored_features_follow_a_corrected_transcript(corpus, tmp_path, caplog):
    """Stage 1 took a corrected transcript into its manifests, but the fbank stage kept the part
    (the same cut ids): training and the test references kept the old text."""
    corpus_dir, _ = corpus
    part = "train-clean-5"
    manifests, fbank = tmp_path / "manifests", tmp_path / "fbank"
    prepare_manifests(corpus_dir, manifests, [part])
    out = compute_fbank_for_parts(manifests, fbank, [part], perturb_parts=[part])[part]
    trans = corpus_dir / part / "1001" / "10" / "1001-10.trans.txt"
    old, new = trans.read_text().splitlines()[0].split(" ", 1)[1], "A CORRECTED LINE"
    trans.write_text(trans.read_text().replace(old, new, 1))
    prepare_manifests(corpus_dir, manifests, [part])
    compute_fbank_for_parts(manifests, fbank, [part], perturb_parts=[part])
    assert "holds other transcripts than" in caplog.text and "(3 cut(s), e.g. 1001-10-0000)" \
        in caplog.text
    texts = {c.id: c.supervisions[0].text for c in CutSet.from_file(out)}
    assert [texts[f"1001-10-0000{s}"] for s in ("", "_sp0.9", "_sp1.1")] == [new] * 3
    assert old not in texts.values()


def test_stored_features_follow_the_mel_bins_asked_for(corpus, tmp_path, caplog):
    """`asr prepare fbank --num-mel-bins 40` over a part stored with 80 bins said only that the
    part exists and kept the 80-bin features (training then refused them)."""
    corpus_dir, _ = corpus
    part = "dev-clean-2"
    manifests, fbank = tmp_path / "manifests", tmp_path / "fbank"
    prepare_manifests(corpus_dir, manifests, [part])
    out = compute_fbank_for_parts(manifests, fbank, [part])[part]
    compute_fbank_for_parts(manifests, fbank, [part], cfg=FbankConfig(num_mel_bins=40))
    assert "holds features of 80 mel bins every 10 ms, not the 40 every 10 ms asked for" \
        in caplog.text
    assert {c.num_features for c in CutSet.from_file(out)} == {40}
    before = out.stat().st_mtime_ns  # the same request again: reused
    compute_fbank_for_parts(manifests, fbank, [part], cfg=FbankConfig(num_mel_bins=40))
    assert out.stat().st_mtime_ns == before


def _durations(manifest: Path) -> dict[str, float]:
    return {c.id: round(c.duration, 2) for c in CutSet.from_file(manifest)}


def _remake_audio(corpus_dir: Path, part: str, scale: float, seed: int) -> dict[str, float]:
    """The audio of ``part`` made again under the same utterance ids and texts (as
    `asr synthesize --overwrite` with other voices does), each utterance ``scale`` times as
    long; returns utterance id -> its new duration."""
    spec = {key: [(round(duration * scale, 2), text) for duration, text in entries]
            for key, entries in TREE[part].items()}
    return {u.utt_id: round(u.num_samples / 16000, 2)
            for u in write_part(corpus_dir, part, spec, seed=seed)}


def test_manifests_follow_audio_made_again_under_the_same_texts(corpus, tmp_path, caplog):
    """Stage 1 compared only ids and texts: over audio made again with other lengths it reused
    the recordings, and the decoding check then refused every file as "truncated or corrupt
    audio ... replace the file" (a rerun succeeded, the manifests being removed by then)."""
    corpus_dir, _ = corpus
    out = tmp_path / "manifests"
    prepare_manifests(corpus_dir, out, [PART])
    recordings = out / f"librispeech_recordings_{PART}.jsonl.gz"
    before = recordings.stat().st_mtime_ns
    _remake_audio(corpus_dir, PART, 1.0, seed=5)  # other audio of the same lengths: still true
    prepare_manifests(corpus_dir, out, [PART])
    assert recordings.stat().st_mtime_ns == before and "preparing them again" not in caplog.text
    new = _remake_audio(corpus_dir, PART, 1.5, seed=6)
    assert _durations(prepare_manifests(corpus_dir, out, [PART])[PART]) == new
    assert ("recordings of audio files that changed since (3 of 3, e.g. "
            f"{corpus_dir / PART / '2001' / '30' / '2001-30-0000.flac'}: 12800 samples at 16000 Hz "
            "in the manifest, 19200 at 16000 Hz in the file)") in caplog.text


def test_stored_features_follow_audio_made_again(corpus, tmp_path, caplog):
    """The fbank stage compared only ids, texts and feature shapes: over audio made again under
    the same ids and texts it kept the features (and durations) of the old audio, both when the
    new audio has other lengths (stage 1's manifest says so) and when only its sound changed
    (the files' size and modification time say so)."""
    corpus_dir, _ = corpus
    manifests, fbank = tmp_path / "manifests", tmp_path / "fbank"
    prepare_manifests(corpus_dir, manifests, [PART])
    out = compute_fbank_for_parts(manifests, fbank, [PART])[PART]
    before, stamp = _features(out), out.stat().st_mtime_ns
    compute_fbank_for_parts(manifests, fbank, [PART])  # nothing changed: kept
    assert out.stat().st_mtime_ns == stamp and "again" not in caplog.text
    _remake_audio(corpus_dir, PART, 1.0, seed=5)  # the same lengths: stage 1's manifest stays
    prepare_manifests(corpus_dir, manifests, [PART])
    compute_fbank_for_parts(manifests, fbank, [PART])
    assert "holds features of audio files rewritten since (3 of 3, e.g. " in caplog.text
    after = _features(out)
    assert all(after[k].shape == before[k].shape and (after[k] != before[k]).any() for k in before)
    new = _remake_audio(corpus_dir, PART, 1.5, seed=6)  # other lengths: stage 1 follows
    fresh = tmp_path / "manifests-again"  # as stage 1 over the old output would make them
    prepare_manifests(corpus_dir, fresh, [PART])
    compute_fbank_for_parts(fresh, fbank, [PART])
    assert _durations(out) == new
    assert (f"holds features of other audio than {cuts_path(fresh, PART)} (3 cut(s), e.g. "
            f"2001-30-0000: 0.8 s of 12800 samples at 16000 Hz in "
            f"{corpus_dir / PART / '2001' / '30' / '2001-30-0000.flac'}, now 1.2 s of 19200 "
            "samples at 16000 Hz)") in caplog.text


def test_stored_features_without_their_audio_record_adopt_the_current_files(corpus, tmp_path,
                                                                           caplog):
    """A part stored without a record of its audio files (by an older version, or a kill between
    its manifest and its record) whose cuts match the input in every other respect used to be
    computed again: hours of fbank for LibriSpeech on the first rerun after an upgrade. It is
    kept and records the files' current states, so that a later rewrite of the same length is
    seen; audio removed since is no change (its features are kept)."""
    corpus_dir, _ = corpus
    manifests, fbank = tmp_path / "manifests", tmp_path / "fbank"
    prepare_manifests(corpus_dir, manifests, [PART])
    out = compute_fbank_for_parts(manifests, fbank, [PART])[PART]
    record = fingerprint_path(out)
    written = record.read_text()
    record.unlink()  # as an older version left it
    before, stamp = _features(out), out.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="asr.data.fbank"):
        compute_fbank_for_parts(manifests, fbank, [PART])
    assert out.stat().st_mtime_ns == stamp and "again" not in caplog.text
    assert record.read_text() == written  # the same files in the same states
    adopted = [r for r in caplog.records if "adopted" in r.getMessage()]
    assert len(adopted) == 1 and adopted[0].levelno == logging.INFO
    assert f"{out} has no record of its audio files ({record.name}): adopted the current " \
        "states of the 3 audio files of its input" in adopted[0].getMessage()
    caplog.clear()
    _remake_audio(corpus_dir, PART, 1.0, seed=5)  # the same lengths: the manifests stay true
    compute_fbank_for_parts(manifests, fbank, [PART])
    assert "holds features of audio files rewritten since (3 of 3, e.g. " in caplog.text
    after = _features(out)
    assert all(after[k].shape == before[k].shape and (after[k] != before[k]).any() for k in before)
    shutil.rmtree(corpus_dir / PART)
    stamp = out.stat().st_mtime_ns
    compute_fbank_for_parts(manifests, fbank, [PART])
    assert out.stat().st_mtime_ns == stamp


def test_stored_features_without_their_audio_record_are_checked_first(corpus, tmp_path,
                                                                       caplog):
    """A part without its record is adopted only while its cuts match the input: one of other
    transcripts is computed again (and then records its audio files)."""
    corpus_dir, _ = corpus
    manifests, fbank = tmp_path / "manifests", tmp_path / "fbank"
    prepare_manifests(corpus_dir, manifests, [PART])
    out = compute_fbank_for_parts(manifests, fbank, [PART])[PART]
    record = fingerprint_path(out)
    record.unlink()
    trans = corpus_dir / PART / "2001" / "30" / "2001-30.trans.txt"
    trans.write_text(trans.read_text().replace("TEST ONE", "TEST WON"))
    prepare_manifests(corpus_dir, manifests, [PART])
    with caplog.at_level(logging.INFO, logger="asr.data.fbank"):
        compute_fbank_for_parts(manifests, fbank, [PART])
    assert "holds other transcripts than" in caplog.text and "adopted" not in caplog.text
    assert record.is_file()


def test_stage_1_and_2_follow_a_synthetic_corpus_made_again(tmp_path, caplog):
    """`asr synthesize --overwrite` with slower voices (the same ids and texts): stage 1 refused
    the new audio as truncated, and stage 2, once a rerun of stage 1 passed, kept the features
    and durations of the old audio."""
    held = [voice for voice in VOICES if voice.held_out]
    part = "test-clean"
    corpus_dir, manifests, fbank = tmp_path / "LibriSpeech", tmp_path / "m", tmp_path / "f"
    synthesize_corpus(tmp_path, {part: 2}, progress=False, voices=held)
    prepare_manifests(corpus_dir, manifests, [part])
    out = compute_fbank_for_parts(manifests, fbank, [part])[part]
    slow = [dataclasses.replace(voice, base_rate=voice.base_rate * 0.5) for voice in held]
    synthesize_corpus(tmp_path, {part: 2}, progress=False, voices=slow, overwrite=True)
    new = {path.stem: round(sf.info(path).duration, 2) for path in corpus_dir.rglob("*.flac")}
    assert _durations(prepare_manifests(corpus_dir, manifests, [part])[part]) == new
    compute_fbank_for_parts(manifests, fbank, [part])
    assert _durations(out) == new


def test_stored_features_follow_a_moved_corpus_without_being_computed_again(corpus, tmp_path,
                                                                             caplog):
    """A corpus moved elsewhere (``mv``, ``cp -a``: each file keeps its size and modification
    time) gave stage 1 manifests naming the new paths, and stage 2 then computed every
    feature again: hours for LibriSpeech with speed copies. The stored cuts now name the new
    paths and keep their features; the record follows, so a later rewrite is still seen. A
    file whose state is not the recorded one is no move: the part is computed again."""
    corpus_dir, _ = corpus
    part = "train-clean-5"
    manifests, fbank = tmp_path / "manifests", tmp_path / "fbank"
    prepare_manifests(corpus_dir, manifests, [part])
    out = compute_fbank_for_parts(manifests, fbank, [part], perturb_parts=[part])[part]
    before, stamp = _features(out), _storage(out)
    moved = tmp_path / "moved" / "LS"  # mv LibriSpeech moved/LS: one folder moved, renamed
    moved.parent.mkdir()
    shutil.move(corpus_dir, moved)
    prepare_manifests(moved, manifests, [part])
    with caplog.at_level(logging.INFO, logger="asr.data.fbank"):
        compute_fbank_for_parts(manifests, fbank, [part], perturb_parts=[part])
    assert "computing part" not in caplog.text and _storage(out) == stamp
    cuts = CutSet.from_file(out)
    assert len(cuts) == 3 * sum(len(v) for v in TREE[part].values())
    assert all(Path(s.source).is_relative_to(moved / part) and Path(s.source).is_file()
               for c in cuts for s in c.recording.sources)
    after = _features(out)
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], before[k]) for k in before)
    record = json.loads(fingerprint_path(out).read_text())["audio_files"]
    assert sorted(record) == sorted(str(Path(s.source)) for c in cuts for s in c.recording.sources
                                    if "_sp" not in c.id)
    assert f"{out}: 8 of its audio files moved (e.g. {corpus_dir / part}" in caplog.text
    caplog.clear()
    compute_fbank_for_parts(manifests, fbank, [part], perturb_parts=[part])  # as it is: kept
    assert _storage(out) == stamp and "computing part" not in caplog.text
    again = tmp_path / "again" / "LibriSpeech"
    shutil.copytree(moved, again, copy_function=shutil.copyfile)  # new times: other files
    shutil.rmtree(moved)
    prepare_manifests(again, manifests, [part])
    compute_fbank_for_parts(manifests, fbank, [part], perturb_parts=[part])
    assert "holds features of other audio than" in caplog.text and _storage(out) != stamp


def _storage(manifest: Path) -> tuple[int, int]:
    """The inode and modification time of the feature archive of ``manifest``'s part: a
    recomputation writes a new one."""
    [path] = {c.features.storage_path for c in CutSet.from_file(manifest)}
    stat = Path(path).stat()
    return stat.st_ino, stat.st_mtime_ns


def _same_named_files_stored(tmp_path: Path, seed: int) -> tuple[list[Path], Path, Path, Path]:
    """Two files of one name in two folders (``corpus/a/x.wav``, ``corpus/b/x.wav``), of one
    size and modification time but other audio, as cuts r0 and r1 of the part ``part``, whose
    features are computed into ``tmp_path/fbank``. Returns the files, the manifests folder, the
    part's cut manifest and its stored feature manifest."""
    rng = np.random.default_rng(seed)
    paths = []
    for folder in ("a", "b"):
        path = tmp_path / "corpus" / folder / "x.wav"
        path.parent.mkdir(parents=True)
        sf.write(path, 0.3 * rng.standard_normal(8000), 16000, subtype="PCM_16")
        os.utime(path, ns=(1_600_000_000 * 10**9,) * 2)
        paths.append(path)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    cuts = CutSet.from_cuts(Recording.from_file(p, recording_id=f"r{i}").to_cut()
                            for i, p in enumerate(paths))
    src = cuts_path(manifests, "part")
    cuts.to_file(src)
    out = compute_fbank_for_parts(manifests, tmp_path / "fbank", ["part"])["part"]
    return paths, manifests, src, out


@pytest.mark.parametrize("remap", ["swapped", "joined", "merged"])
def test_stored_features_are_not_kept_for_files_renamed_among_the_recorded_ones(tmp_path, remap):
    """Files of one name in other folders (``a/x.wav``, ``b/x.wav``), of one size and time (as a
    tar extracts equal-length clips), are no moved corpus when the input now pairs a cut with
    another of the recorded files (two swapped, or two cuts on one file) or two of them with
    one new file (a copy of one, ``cp -a``): the stored features of a cut are then of other
    audio than its input's, and the part is computed again."""
    paths, manifests, src, out = _same_named_files_stored(tmp_path, seed=3)
    fbank = tmp_path / "fbank"
    records = [json.loads(line) for line in gzip.open(src, "rt")]
    sources = [r["recording"]["sources"][0] for r in records]
    if remap == "swapped":
        sources[0]["source"], sources[1]["source"] = sources[1]["source"], sources[0]["source"]
    elif remap == "joined":
        sources[0]["source"] = sources[1]["source"]
    else:
        copy = tmp_path / "corpus" / "c" / "x.wav"
        copy.parent.mkdir()
        shutil.copy2(paths[0], copy)  # the size and modification time of both
        sources[0]["source"] = sources[1]["source"] = str(copy)
    with gzip.open(src, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    compute_fbank_for_parts(manifests, fbank, ["part"])
    fresh = compute_fbank_for_parts(manifests, tmp_path / "fresh", ["part"])["part"]
    after, expected = _features(out), _features(fresh)
    assert all(np.array_equal(after[k], expected[k]) for k in expected)


@pytest.mark.parametrize("pairing", ["kept", "crossed"])
def test_a_moved_corpus_keeps_each_file_in_its_folder(tmp_path, pairing):
    """A corpus whose file names repeat across folders (``a/x.wav``, ``b/x.wav``, one size and
    time) is moved (``corpus`` -> ``moved``). Stage 1 pairs each cut with the file of its own
    folder (kept: the features are not computed again), or, its cut ids not following the
    paths, with the same-named file of the other folder: compared by file name only, that was
    a move, and each cut kept the features of the other file's audio. The files must keep
    their paths below one moved folder, so the crossed part is computed again."""
    _, manifests, src, out = _same_named_files_stored(tmp_path, seed=5)
    fbank = tmp_path / "fbank"
    old_root, new_root = tmp_path / "corpus", tmp_path / "moved"
    stamp = _storage(out)
    shutil.move(old_root, new_root)
    folders = ("a", "b") if pairing == "kept" else ("b", "a")
    records = [json.loads(line) for line in gzip.open(src, "rt")]
    for record, folder in zip(records, folders):
        record["recording"]["sources"][0]["source"] = str(new_root / folder / "x.wav")
    with gzip.open(src, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    compute_fbank_for_parts(manifests, fbank, ["part"])
    assert (_storage(out) == stamp) == (pairing == "kept")
    fresh = compute_fbank_for_parts(manifests, tmp_path / "fresh", ["part"])["part"]
    after, expected = _features(out), _features(fresh)
    assert after.keys() == expected.keys()
    assert all(np.array_equal(after[k], expected[k]) for k in expected)
    assert {c.id: c.recording.sources[0].source for c in CutSet.from_file(out)} == {
        c.id: c.recording.sources[0].source for c in CutSet.from_file(fresh)}


@pytest.mark.parametrize("pairing", ["moved", "joined"])
def test_a_moved_corpus_is_paired_by_path_where_cut_ids_repeat(tmp_path, pairing):
    """A user's own prepare step gave two cuts one id (``dup``), on ``a/x.wav`` and ``b/x.wav``
    (one size and time). The move was found by pairing stored and input cuts by id, the last
    stored cut of an id standing for all: the corpus moved as it was was computed again, and
    one whose input put both cuts on ``moved/a/x.wav`` kept, under that path, the features of
    ``b/x.wav``. Paired by path below the moved folder, the first keeps its features and the
    second is computed again."""
    _, manifests, src, out = _same_named_files_stored(tmp_path, seed=11)
    fbank = tmp_path / "fbank"
    records = [json.loads(line) for line in gzip.open(src, "rt")]
    for record in records:
        record["id"] = "dup"
    with gzip.open(src, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    compute_fbank_for_parts(manifests, fbank, ["part"])
    stamp = _storage(out)
    shutil.move(tmp_path / "corpus", tmp_path / "moved")
    folders = ("a", "b") if pairing == "moved" else ("a", "a")
    for record, folder in zip(records, folders):
        record["recording"]["sources"][0]["source"] = str(tmp_path / "moved" / folder / "x.wav")
    with gzip.open(src, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    compute_fbank_for_parts(manifests, fbank, ["part"])
    assert (_storage(out) == stamp) == (pairing == "moved")
    fresh = compute_fbank_for_parts(manifests, tmp_path / "fresh", ["part"])["part"]
    stored, expected = CutSet.from_file(out), CutSet.from_file(fresh)
    assert [c.recording.sources[0].source for c in stored] == [
        c.recording.sources[0].source for c in expected]
    assert all(np.array_equal(a.load_features(), b.load_features())
               for a, b in zip(stored, expected, strict=True))


def _rewrite_ids(manifest: Path, ids: dict[int, str]) -> None:
    """Gives the records of the gzipped cut manifest ``manifest`` at the line numbers of
    ``ids`` those ids."""
    records = [json.loads(line) for line in gzip.open(manifest, "rt")]
    for line, cut_id in ids.items():
        records[line]["id"] = cut_id
    with gzip.open(manifest, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_stored_cut_ids_counted_otherwise_than_the_input_are_computed_again(tmp_path, caplog):
    """An input that repeats a cut id (``dup`` twice) with speed copies, and stored cuts that
    hold as many cuts under the same ids but ``dup`` three times (a speed copy renamed): the
    check compared the sets of ids, and then crashed on ``min()`` of no differing input cut
    (ValueError) instead of deciding. The part is computed again, saying why."""
    _, manifests, src, out = _same_named_files_stored(tmp_path, seed=13)
    fbank = tmp_path / "fbank"
    _rewrite_ids(src, {0: "dup", 1: "dup"})
    compute_fbank_for_parts(manifests, fbank, ["part"], perturb_parts=["part"])
    line = next(i for i, c in enumerate(CutSet.from_file(out)) if c.id == "dup_sp0.9")
    _rewrite_ids(out, {line: "dup"})
    compute_fbank_for_parts(manifests, fbank, ["part"], perturb_parts=["part"])
    assert f"holds other cut ids than {src} with speed copies (e.g. dup 3 time(s), not 2)" \
        in caplog.text
    assert sorted(c.id for c in CutSet.from_file(out)) == ["dup"] * 2 + ["dup_sp0.9"] * 2 + [
        "dup_sp1.1"] * 2


@pytest.mark.parametrize("moved", [False, True])
def test_an_input_id_that_reads_as_a_speed_copy_keeps_its_features(tmp_path, caplog, moved):
    """Input cuts ``r`` and ``r_sp0.9`` with speed copies: a copy of ``r`` has the id of the
    input's second cut. The stored cuts were split into input cuts and copies by id, so the
    part held "more cuts of id r_sp0.9" than its input and was computed again on every run
    (and so was the same corpus moved). The copies are told by their audio's speed transform:
    an unchanged (or moved) input keeps its features, and a changed one is still computed
    again, naming the cut."""
    _, manifests, src, out = _same_named_files_stored(tmp_path, seed=17)
    fbank = tmp_path / "fbank"
    _rewrite_ids(src, {0: "r", 1: "r_sp0.9"})
    compute_fbank_for_parts(manifests, fbank, ["part"], perturb_parts=["part"])
    assert sorted(c.id for c in CutSet.from_file(out)) == [
        "r", "r_sp0.9", "r_sp0.9", "r_sp0.9_sp0.9", "r_sp0.9_sp1.1", "r_sp1.1"]
    stamp = _storage(out)
    if moved:
        shutil.move(tmp_path / "corpus", tmp_path / "moved")
        records = [json.loads(line) for line in gzip.open(src, "rt")]
        for record in records:
            source = record["recording"]["sources"][0]
            source["source"] = source["source"].replace(str(tmp_path / "corpus"),
                                                        str(tmp_path / "moved"))
        with gzip.open(src, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="asr.data.fbank"):
        compute_fbank_for_parts(manifests, fbank, ["part"], perturb_parts=["part"])
    assert "computing part part again" not in caplog.text
    assert _storage(out) == stamp
    folder = "moved" if moved else "corpus"
    assert {c.id: c.recording.sources[0].source for c in CutSet.from_file(out)
            if c.id in ("r", "r_sp0.9_sp1.1")} == {
        "r": str(tmp_path / folder / "a" / "x.wav"),
        "r_sp0.9_sp1.1": str(tmp_path / folder / "b" / "x.wav")}
    records = [json.loads(line) for line in gzip.open(src, "rt")]
    records[1]["recording"]["sources"][0]["source"] = records[0]["recording"]["sources"][0][
        "source"]
    with gzip.open(src, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    caplog.clear()
    compute_fbank_for_parts(manifests, fbank, ["part"], perturb_parts=["part"])
    assert f"holds features of other audio than {src} (1 cut(s), e.g. r_sp0.9: " in caplog.text
    assert "computing part part again" in caplog.text
