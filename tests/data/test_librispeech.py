"""Manifests from lhotse's LibriSpeech recipe, and clear errors on malformed corpora."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lhotse import CutSet, RecordingSet, SupervisionSet
from librispeech_tree import TREE, write_part

from asr.data import librispeech
from asr.data.librispeech import CorpusError, prepare_manifests, validate_librispeech_tree


def test_prepare_manifests_counts_texts_durations(prepared: dict) -> None:
    manifests_dir = prepared["root"] / "manifests"
    for part, utts in prepared["utts"].items():
        assert prepared["manifests"][part] == manifests_dir / f"librispeech_cuts_{part}.jsonl.gz"
        recordings = RecordingSet.from_file(
            manifests_dir / f"librispeech_recordings_{part}.jsonl.gz"
        )
        sups = SupervisionSet.from_file(manifests_dir / f"librispeech_supervisions_{part}.jsonl.gz")
        cuts = CutSet.from_file(prepared["manifests"][part])
        assert len(recordings) == len(sups) == len(cuts) == len(utts)
        by_id = {cut.id: cut for cut in cuts}
        assert set(by_id) == {u.utt_id for u in utts}
        for utt in utts:
            cut = by_id[utt.utt_id]
            assert cut.duration == pytest.approx(utt.num_samples / 16000)
            assert cut.recording.num_samples == utt.num_samples
            assert [s.text for s in cut.supervisions] == [utt.text]
            assert cut.supervisions[0].speaker == utt.utt_id.split("-")[0]
            assert not cut.has_features


def test_validate_summaries(corpus) -> None:
    corpus_dir, utts = corpus
    summaries = validate_librispeech_tree(corpus_dir, list(TREE))
    assert [(s.part, s.num_utterances, s.num_speakers) for s in summaries] == [
        ("train-clean-5", 8, 2), ("dev-clean-2", 3, 1)]
    assert all(s.num_unreferenced_flacs == 0 for s in summaries)


def test_transcripts_saved_with_windows_line_ends_are_valid(corpus) -> None:
    """A \\r\\n line end (a Windows editor's) is a line end, not a carriage return inside the
    line (which lhotse would break the line at, and is refused)."""
    corpus_dir, _ = corpus
    for trans in corpus_dir.rglob("*.trans.txt"):
        trans.write_bytes(trans.read_bytes().replace(b"\n", b"\r\n"))
    summaries = validate_librispeech_tree(corpus_dir, list(TREE))
    assert [s.num_utterances for s in summaries] == [8, 3]


def _lhotse_reads(trans: Path) -> list[tuple[str, str]]:
    """The (id, text) pairs of ``trans`` as lhotse's LibriSpeech recipe reads them:
    ``open()`` lines (universal newlines), each ``line.strip().split(maxsplit=1)``."""
    pairs = []
    with open(trans) as f:
        for line in f:
            utt_id, text = line.strip().split(maxsplit=1)  # lhotse's parse_utterance
            pairs.append((utt_id, text))
    return pairs


def test_a_last_line_ended_by_a_lone_carriage_return_is_valid_as_lhotse_reads_it(
        corpus) -> None:
    """``open()`` ends a line at a lone \\r, so lhotse reads a file whose last line ends in one
    as it reads the file with \\n there: the validator accepts it, with the same texts."""
    corpus_dir, _ = corpus
    trans = corpus_dir / "dev-clean-2/2001/30/2001-30.trans.txt"
    data = trans.read_bytes()
    assert data.endswith(b"\n")
    trans.write_bytes(data[:-1] + b"\r")
    [(summary, texts)] = librispeech._validated_parts(corpus_dir, ["dev-clean-2"])
    assert summary.num_utterances == 3
    assert sorted(texts.items()) == sorted(_lhotse_reads(trans))


@pytest.mark.parametrize(("end", "where"), [
    (b"\r\r", "3: a carriage return"), (b"\r\r\n", "3: a carriage return"),
    (b"\n\r", "4: empty line")])
def test_a_carriage_return_before_the_last_line_end_is_still_refused(
        corpus, end: bytes, where: str) -> None:
    """Only the file's own last \\r ends a line that read_lines keeps it in: another one makes
    lhotse read an empty line, on which its recipe fails."""
    corpus_dir, _ = corpus
    trans = corpus_dir / "dev-clean-2/2001/30/2001-30.trans.txt"
    trans.write_bytes(trans.read_bytes()[:-1] + end)
    with pytest.raises(ValueError):
        _lhotse_reads(trans)
    with pytest.raises(CorpusError, match=re.escape(f"{trans}:{where}")):
        validate_librispeech_tree(corpus_dir, ["dev-clean-2"])


def test_prepare_manifests_reads_each_transcript_once(corpus, tmp_path: Path,
                                                      monkeypatch) -> None:
    """The texts that tell whether lhotse's cached manifests are stale are those the validation
    read: each transcript was read a second time for them (lhotse's own reading aside)."""
    import asr.data.librispeech as librispeech

    corpus_dir, _ = corpus
    reads: list[Path] = []
    read_lines, path_open = librispeech.read_lines, Path.open

    def counting_read_lines(path, *args, **kwargs):
        reads.append(Path(path))
        return read_lines(path, *args, **kwargs)

    def counting_open(self, *args, **kwargs):
        if self.name.endswith(".trans.txt"):
            reads.append(self)
        return path_open(self, *args, **kwargs)

    monkeypatch.setattr(librispeech, "read_lines", counting_read_lines)
    monkeypatch.setattr(Path, "open", counting_open)
    prepare_manifests(corpus_dir, tmp_path / "out", ["dev-clean-2"])
    transcripts = sorted((corpus_dir / "dev-clean-2").rglob("*.trans.txt"))
    assert sorted(reads) == transcripts


def test_missing_flac_names_file_and_line(corpus, tmp_path: Path) -> None:
    corpus_dir, _ = corpus
    (corpus_dir / "train-clean-5/1002/20/1002-20-0002.flac").unlink()
    trans = corpus_dir / "train-clean-5/1002/20/1002-20.trans.txt"
    with pytest.raises(CorpusError,
                       match=re.escape(f"{trans}:3:") + ".*1002-20-0002.flac.*missing"):
        prepare_manifests(corpus_dir, tmp_path / "out", ["train-clean-5"])
    assert not (tmp_path / "out").exists()  # validation runs before lhotse writes anything


def test_a_flac_cut_short_is_refused_by_prepare_manifests(corpus, tmp_path: Path) -> None:
    """Its header is intact: lhotse took the header's duration, and the file passed until its
    audio was read (prepare fbank, or training with on-the-fly features)."""
    corpus_dir, _ = corpus
    flac = corpus_dir / "train-clean-5/1001/10/1001-10-0003.flac"
    flac.write_bytes(flac.read_bytes()[:-3000])
    for num_jobs in (1, 2):
        with pytest.raises(CorpusError, match=re.escape(f"{flac}: truncated or corrupt audio: "
                                                        "its header declares 33600 samples")):
            prepare_manifests(corpus_dir, tmp_path / "out", list(TREE), num_jobs=num_jobs)
        assert not list((tmp_path / "out").glob("librispeech_*_train-clean-5.*"))
        assert not list((tmp_path / "out").glob("librispeech_cuts_*"))


def test_audio_that_decodes_to_other_lengths_is_named_first_in_order(tmp_path: Path) -> None:
    """A file that decodes without an error to fewer samples than its recording declares."""
    import numpy as np
    import soundfile as sf
    from lhotse import Recording
    from lhotse.utils import fastcopy

    from asr.data.librispeech import check_audio_lengths

    recordings = []
    for i, (actual, declared) in enumerate(((800, 800), (700, 800), (800, 900))):
        sf.write(tmp_path / f"{i}.flac", np.zeros(actual, dtype=np.float32), 16000)
        recordings.append(fastcopy(Recording.from_file(tmp_path / f"{i}.flac"),
                                   num_samples=declared))
    check_audio_lengths(recordings[:1], num_jobs=2)
    for num_jobs in (1, 2):
        with pytest.raises(CorpusError, match=re.escape(
                f"{tmp_path / '1.flac'}: truncated or corrupt audio: its header declares 800 "
                "samples, 700 decode; replace the file, or remove it and its transcript line")):
            check_audio_lengths(recordings, num_jobs=num_jobs)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("2001-30-0003\n", "no transcript text"),
        ("2001-30-0003    \n", "no transcript text"),
        ("2001_30_0003 SOME TEXT\n", "bad utterance id '2001_30_0003'"),
        ("2001-30-xyz SOME TEXT\n", "bad utterance id"),
        ("2001-31-0003 SOME TEXT\n", "does not belong to speaker 2001 chapter 30"),
        ("\n", "empty line"),
        ("2001-30-0000 DUPLICATE\n", "duplicate utterance id"),
        # read_lines keeps it in the line, lhotse's open() would break the line there
        ("2001-30-0003 SOME\rTEXT\n", "a carriage return (\\r) inside the line"),
    ],
)
def test_malformed_trans_line_names_file_and_line(corpus, bad_line: str, message: str) -> None:
    corpus_dir, _ = corpus
    trans = corpus_dir / "dev-clean-2/2001/30/2001-30.trans.txt"
    lines = trans.read_text().splitlines(keepends=True)
    lines.insert(2, bad_line)  # becomes line 3
    trans.write_text("".join(lines))
    with pytest.raises(CorpusError, match=re.escape(f"{trans}:3: ") + ".*" + re.escape(message)):
        validate_librispeech_tree(corpus_dir, ["dev-clean-2"])


def test_transcript_not_utf8_names_file_and_line(corpus) -> None:
    corpus_dir, _ = corpus
    trans = corpus_dir / "dev-clean-2/2001/30/2001-30.trans.txt"
    lines = trans.read_bytes().splitlines(keepends=True)
    lines.insert(1, "2001-30-0009 CAF\u00c9\n".encode("latin-1"))  # becomes line 2
    trans.write_bytes(b"".join(lines))
    with pytest.raises(CorpusError, match=re.escape(f"{trans}:2: not UTF-8")):
        validate_librispeech_tree(corpus_dir, ["dev-clean-2"])


def test_bad_layout_errors(corpus) -> None:
    corpus_dir, _ = corpus
    with pytest.raises(CorpusError, match="did you mean --corpus-dir"):
        validate_librispeech_tree(corpus_dir.parent, ["dev-clean-2"])
    with pytest.raises(CorpusError, match="test-other does not exist"):
        validate_librispeech_tree(corpus_dir, ["test-other"])
    (corpus_dir / "empty-part").mkdir()
    with pytest.raises(CorpusError, match="no '\\*.trans.txt'"):
        validate_librispeech_tree(corpus_dir, ["empty-part"])
    misplaced = corpus_dir / "dev-clean-2/2001/30/2001-31.trans.txt"
    misplaced.write_text("2001-31-0000 TEXT\n")
    with pytest.raises(CorpusError, match="must be located in"):
        validate_librispeech_tree(corpus_dir, ["dev-clean-2"])


def test_custom_part_names_are_directories(tmp_path: Path) -> None:
    corpus_dir = tmp_path / "corpus"
    write_part(corpus_dir, "my-part", {("7", "8"): [(0.5, "OK"), (0.7, "FINE")]})
    paths = prepare_manifests(corpus_dir, tmp_path / "m", ["my-part"])
    assert sorted(c.id for c in CutSet.from_file(paths["my-part"])) == ["7-8-0000", "7-8-0001"]
