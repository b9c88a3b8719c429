from __future__ import annotations

import re
from pathlib import Path

import pytest

from asr.tokenizers.transcripts import read_transcripts, transcript_kind


def test_formats(tmp_path):
    tree = tmp_path / "LibriSpeech" / "train" / "19" / "198"
    tree.mkdir(parents=True)
    (tree / "19-198.trans.txt").write_text("19-198-0000 HELLO  WORLD\n19-198-0001 GOOD BYE\n")
    other = tmp_path / "LibriSpeech" / "train" / "20" / "1"
    other.mkdir(parents=True)
    (other / "20-1.trans.txt").write_text("20-1-0000 ZED\n20-1-0001\n")
    plain = tmp_path / "sentences.txt"
    plain.write_text("ONE SENTENCE\n\n  TWO  \n")
    kaldi = tmp_path / "text"
    kaldi.write_text("u1 KALDI TEXT\n")
    assert [transcript_kind(p) for p in (tmp_path / "LibriSpeech", plain, kaldi)] == [
        "dir", "plain", "kaldi",
    ]
    assert read_transcripts([tmp_path / "LibriSpeech", plain, kaldi]) == [
        "HELLO WORLD", "GOOD BYE", "ZED", "ONE SENTENCE", "TWO", "KALDI TEXT",
    ]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_transcripts([tmp_path / "missing.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.trans.txt"):
        read_transcripts([tmp_path / "empty"])


def test_lhotse_manifests(tmp_path):
    from lhotse import CutSet, SupervisionSegment, SupervisionSet
    from lhotse.testing.dummies import dummy_cut

    sups = SupervisionSet.from_segments([
        SupervisionSegment(id="s1", recording_id="r1", start=0, duration=1, text="FIRST ONE"),
        SupervisionSegment(id="s2", recording_id="r1", start=1, duration=1, text="SECOND"),
    ])
    sups.to_file(tmp_path / "supervisions.jsonl.gz")
    cut = dummy_cut(0, supervisions=[
        SupervisionSegment(id="s3", recording_id="dummy-recording-0000", start=0, duration=1,
                           text="FROM  A CUT"),
    ])
    CutSet.from_cuts([cut]).to_file(tmp_path / "cuts.jsonl.gz")
    assert transcript_kind(tmp_path / "cuts.jsonl.gz") == "lhotse"
    assert read_transcripts([tmp_path / "supervisions.jsonl.gz", tmp_path / "cuts.jsonl.gz"]) == [
        "FIRST ONE", "SECOND", "FROM A CUT",
    ]


@pytest.mark.parametrize("name", ["cuts.jsonl", "cuts.jsonl.gz"])
def test_a_lhotse_manifest_whose_name_belies_its_compression_is_named(tmp_path, name):
    """lhotse reads a manifest by its name: a gzip ``cuts.jsonl`` failed with a bare
    UnicodeDecodeError, a plain ``cuts.jsonl.gz`` with 'Not a gzipped file'."""
    import gzip

    from lhotse import CutSet
    from lhotse.testing.dummies import dummy_cut

    CutSet.from_cuts([dummy_cut(0)]).to_file(tmp_path / "right.jsonl.gz")
    data = (tmp_path / "right.jsonl.gz").read_bytes()
    path = tmp_path / name
    path.write_bytes(data if name == "cuts.jsonl" else gzip.decompress(data))
    with pytest.raises(ValueError, match=rf"lhotse manifest {path} is (not )?gzip-compressed"):
        read_transcripts([path])


def test_text_files_may_be_gzip_compressed_whatever_their_names(tmp_path):
    """LibriSpeech's LM corpus ships as ``librispeech-lm-norm.txt.gz``: a gzip text file is
    read as the plain one (told by its first bytes), and a Kaldi ``text.gz`` or
    ``*.trans.txt.gz`` still drops its utterance ids."""
    import gzip

    files = {"lm-norm.txt.gz": b"ONE SENTENCE\n  TWO  \n", "lm-norm.txt": b"THREE\n",
             "text.gz": b"u1 KALDI TEXT\n", "1-2.trans.txt.gz": b"1-2-0000 TRANS TEXT\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(gzip.compress(data))
    assert [transcript_kind(tmp_path / name) for name in files] == [
        "plain", "plain", "kaldi", "kaldi"]
    assert read_transcripts([tmp_path / name for name in files]) == [
        "ONE SENTENCE", "TWO", "THREE", "KALDI TEXT", "TRANS TEXT"]


def test_a_lone_carriage_return_is_whitespace_of_its_sentence(tmp_path):
    """Lines end at \\n and \\r\\n (a Windows editor's); a lone \\r inside a Kaldi or plain
    line stays in it (as Kaldi reads a text file): it was a line break, which made the
    second half of a Kaldi line an utterance id and dropped a word of it."""
    (tmp_path / "text").write_bytes(b"u1 ONE\rTWO THREE\r\nu2 FOUR\n")
    (tmp_path / "corpus.txt").write_bytes(b"FIVE\rSIX\r\nSEVEN\n")
    assert read_transcripts([tmp_path / "text", tmp_path / "corpus.txt"]) == [
        "ONE TWO THREE", "FOUR", "FIVE SIX", "SEVEN"]


def test_a_librispeech_tree_is_read_in_sorted_path_order(tmp_path, monkeypatch):
    """Whatever order the file system lists them in (here: reversed), the *.trans.txt files of
    a directory are read in sorted path order, so the same tree trains the same BPE model."""
    for speaker in ("19", "103", "2"):
        folder = tmp_path / speaker / "1"
        folder.mkdir(parents=True)
        (folder / f"{speaker}-1.trans.txt").write_text(f"{speaker}-1-0000 SPEAKER {speaker}\n")
    listed = Path.rglob
    monkeypatch.setattr(Path, "rglob",
                        lambda self, pattern: reversed(sorted(listed(self, pattern))))
    assert read_transcripts([tmp_path]) == ["SPEAKER 103", "SPEAKER 19", "SPEAKER 2"]


def test_a_sentence_with_the_word_boundary_mark_is_refused_naming_its_file(tmp_path):
    """``asr lm`` and ``asr bpe`` read transcripts here; a ``▁`` in one was refused by the
    tokenizer naming the text only (or, for a word LM, not at all: it became part of a word).
    Now the file and line that hold it are named, in a LibriSpeech tree's directory too."""
    folder = tmp_path / "tree" / "19" / "1"
    folder.mkdir(parents=True)
    bad = folder / "19-1.trans.txt"
    bad.write_text("19-1-0000 FINE\n19-1-0001 A\u2581B\n", encoding="utf-8")
    plain = tmp_path / "plain.txt"
    plain.write_text("FINE\nC\u2581D\n", encoding="utf-8")
    for path, file in ((tmp_path / "tree", bad), (plain, plain)):
        with pytest.raises(ValueError, match=rf"^transcript file {re.escape(str(file))}:2: text "
                                             r"'\w\u2581\w' holds '\u2581'"):
            read_transcripts([path])


def test_a_sentence_the_caller_refuses_is_named_by_its_file_and_line_or_item(tmp_path):
    """``check`` (``asr lm --unit word`` refuses ``<s>``) sees every sentence as it is read; its
    error names the line of a text file and the item of a lhotse manifest."""
    from lhotse import SupervisionSegment, SupervisionSet

    def no_dog(text: str) -> None:
        if "DOG" in text.split():
            raise ValueError("no DOG here")

    plain = tmp_path / "plain.txt"
    plain.write_text("A CAT\n\nA DOG\n", encoding="utf-8")
    SupervisionSet.from_segments([
        SupervisionSegment(id=f"s{i}", recording_id="r1", start=i, duration=1, text=text)
        for i, text in enumerate(["A CAT", "THE DOG"])
    ]).to_file(tmp_path / "sups.jsonl.gz")
    for path, where in ((plain, f"{plain}:3"), (tmp_path / "sups.jsonl.gz",
                                                f"{tmp_path / 'sups.jsonl.gz'} (item 2)")):
        with pytest.raises(ValueError, match=rf"^transcript file {re.escape(where)}: no DOG here"):
            read_transcripts([path], check=no_dog)
        assert read_transcripts([path])[-1].endswith("DOG")


def test_a_line_is_labelled_with_its_file_and_number_only_once_it_is_refused(tmp_path,
                                                                             monkeypatch):
    """Every sentence was labelled ``file:line`` as it was read, refused or not: 0.9-1.2 us a
    line, ~40 s over a 40M-line LM corpus. The label is now made only for a refused one."""
    from asr.tokenizers import transcripts

    labelled: list[int] = []
    label = transcripts._Where.label

    def counted(self, number: int) -> str:
        labelled.append(number)
        return label(self, number)

    monkeypatch.setattr(transcripts._Where, "label", counted)
    kaldi = tmp_path / "text"
    kaldi.write_text("u1 A CAT\nu2 A DOG\nu3 A COW\n", encoding="utf-8")
    assert read_transcripts([kaldi]) == ["A CAT", "A DOG", "A COW"]
    assert labelled == []
    with pytest.raises(ValueError, match=rf"^transcript file {re.escape(str(kaldi))}:2: no DOG"):
        read_transcripts([kaldi], check=lambda text: _refuse(text, "DOG"))
    assert labelled == [2]


def _refuse(text: str, word: str) -> None:
    """A ``check`` of :func:`read_transcripts` that refuses a sentence holding ``word``."""
    if word in text.split():
        raise ValueError(f"no {word} here")
