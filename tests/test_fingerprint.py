"""Fingerprints of made outputs: reuse only while what made an output is unchanged, a stale or
missing fingerprint means making it again, and the fingerprint never outlives its output."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from asr.fingerprint import (
    file_states,
    fingerprint_path,
    is_current,
    read_fingerprint,
    sha256_of_files,
    sha256_of_texts,
    write_fingerprint,
)


def test_an_output_is_current_only_with_the_fingerprint_it_was_made_with(tmp_path, caplog):
    out = tmp_path / "lm.arpa"
    made_from = {"order": 3, "texts_sha256": sha256_of_texts(["A B", "C"]), "fields": ("x",)}
    assert not is_current(out, made_from)  # nothing made yet
    out.write_text("lm")
    write_fingerprint(out, made_from)
    assert fingerprint_path(out) == tmp_path / "lm.arpa.fingerprint.json"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    with caplog.at_level(logging.INFO):
        assert is_current(out, dict(made_from))  # tuples compare as the lists JSON keeps
    assert "reusing it" in caplog.text
    assert not is_current(out, {**made_from, "order": 4, "new": 1})
    assert "(changed: new, order): making it again" in caplog.text
    # the stale fingerprint is gone before the output is made again: a kill while it is being
    # made cannot leave the old fingerprint beside the new output
    assert not fingerprint_path(out).exists()
    assert not is_current(out, made_from)
    assert (
        f"has no fingerprint of what it was made from ({out.name}.fingerprint.json)"
        in caplog.text
    )


def test_an_unreadable_fingerprint_or_a_vanished_output_is_not_current(tmp_path, caplog):
    out = tmp_path / "bpe.model"
    out.write_bytes(b"model")
    fingerprint_path(out).write_text('{"vocab_size": 5')  # cut short
    assert not is_current(out, {"vocab_size": 5})
    assert "unreadable fingerprint bpe.model.fingerprint.json (JSONDecodeError)" in caplog.text
    write_fingerprint(out, {"vocab_size": 5})
    out.unlink()
    assert not is_current(out, {"vocab_size": 5}) and not fingerprint_path(out).exists()


def test_digests_are_those_of_the_content(tmp_path):
    assert sha256_of_texts(["A B", "C"]) == hashlib.sha256(b"A B\nC\n").hexdigest()
    assert sha256_of_texts(["A B", "C"]) != sha256_of_texts(["A", "B C"])
    (tmp_path / "bpe.model").write_bytes(b"\x00\x01")
    digests = sha256_of_files([tmp_path / "bpe.model", tmp_path / "tokens.txt"])
    assert digests == {"bpe.model": hashlib.sha256(b"\x00\x01").hexdigest()}  # absent: left out
    with pytest.raises(ValueError, match="two files named 'bpe.model'"):
        sha256_of_files([tmp_path / "bpe.model", tmp_path / "bpe.model"])
    write_fingerprint(tmp_path / "bpe.model", {"b": 1, "a": [1, 2]})
    assert json.loads(fingerprint_path(tmp_path / "bpe.model").read_text()) == {"a": [1, 2], "b": 1}


def test_a_text_holding_a_newline_is_framed_apart_from_two_texts() -> None:
    """A text with a newline is length-prefixed after a 0xff byte, so it is no longer two
    texts' lines; texts without one keep the digest stored fingerprints were made with."""
    assert sha256_of_texts(["a\nb"]) != sha256_of_texts(["a", "b"])
    assert sha256_of_texts(["a\nb"]) == hashlib.sha256(b"\xff3:a\nb\n").hexdigest()
    assert sha256_of_texts(["a", "b"]) == hashlib.sha256(b"a\nb\n").hexdigest()
    assert sha256_of_texts(["a\n", ""]) != sha256_of_texts(["a", "", ""])
    assert sha256_of_texts([]) != sha256_of_texts([""])


def test_file_states_and_reading_a_stored_fingerprint(tmp_path) -> None:
    """The size and time of data files (None for one that is gone), and a stored fingerprint
    read back as a mapping, or None when it is missing or not a JSON mapping."""
    import os

    data = tmp_path / "feats.lca"
    data.write_bytes(b"12345")
    os.utime(data, ns=(1, 1_700_000_000_123_456_789))
    assert file_states([str(data), str(tmp_path / "gone")]) == {
        str(data): [5, 1_700_000_000_123_456_789], str(tmp_path / "gone"): None}
    out = tmp_path / "shar"
    assert read_fingerprint(out) is None
    write_fingerprint(out, {"shard_size": 2, "fields": ("features",)})
    assert read_fingerprint(out) == {"shard_size": 2, "fields": ["features"]}
    for junk in ("[1, 2]", "{not json", "\udcff"):
        fingerprint_path(out).write_text(junk, errors="surrogateescape")
        assert read_fingerprint(out) is None
