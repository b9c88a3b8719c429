from __future__ import annotations

import math
import random

import kaldialign
import pytest

from asr.metrics.wer import (
    ErrorStats,
    align,
    compute_cer,
    compute_wer,
    edit_distance_matrix,
    text_to_chars,
)


def test_all_correct():
    result = compute_wer(["A B C"], ["A B C"])
    assert result.stats == ErrorStats(num_ref=3)
    assert result.stats.wer == 0.0
    assert result.utterances[0].alignment == (("A", "A"), ("B", "B"), ("C", "C"))


def test_all_deleted():
    stats = compute_wer(["A B C D"], [""]).stats
    assert stats == ErrorStats(num_ref=4, dels=4)
    assert stats.wer == 1.0


def test_insertions_only():
    result = compute_wer(["A B"], ["X A B Y Z"])
    assert result.stats == ErrorStats(num_ref=2, ins=3)
    assert result.stats.wer == 1.5
    assert result.utterances[0].alignment == (
        (None, "X"), ("A", "A"), ("B", "B"), (None, "Y"), (None, "Z"),
    )


def test_mixed_hand_computed():
    # ref: THE CAT SAT ON THE MAT ; hyp: THE BAT SAT THE MAT TODAY
    # CAT->BAT sub, ON deleted, TODAY inserted: 3 errors over 6 words.
    result = compute_wer(["THE CAT SAT ON THE MAT"], ["THE BAT SAT THE MAT TODAY"])
    assert result.stats == ErrorStats(num_ref=6, ins=1, dels=1, subs=1)
    assert result.stats.errors == 3 and result.stats.correct == 4
    assert result.stats.wer == pytest.approx(0.5)
    assert result.utterances[0].alignment == (
        ("THE", "THE"), ("CAT", "BAT"), ("SAT", "SAT"), ("ON", None), ("THE", "THE"),
        ("MAT", "MAT"), (None, "TODAY"),
    )


def test_corpus_sums_counts_and_empty_reference():
    result = compute_wer(["A B", "", "", "C D E F"], ["A", "X Y", "", "C D E F"],
                         utt_ids=["u1", "u2", "u3", "u4"])
    per_utt = [u.stats for u in result.utterances]
    assert per_utt[1] == ErrorStats(num_ref=0, ins=2)
    assert math.isinf(per_utt[1].wer)  # empty reference with errors
    assert per_utt[2].wer == 0.0  # empty reference and hypothesis
    assert result.stats == ErrorStats(num_ref=6, ins=2, dels=1)
    assert result.stats.wer == pytest.approx(3 / 6)
    assert [u.utt_id for u in result.utterances] == ["u1", "u2", "u3", "u4"]
    assert ErrorStats().wer == 0.0


def test_word_sequences_and_length_checks():
    assert compute_wer([["A", "B"]], [["A", "C"]]).stats == ErrorStats(num_ref=2, subs=1)
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        compute_wer(["A", "B"], ["A"])
    with pytest.raises(ValueError, match="1 utterance ids for 2 references"):
        compute_wer(["A", "B"], ["A", "B"], utt_ids=["x"])


def test_cer():
    # "HELLO WORLD" vs "HALLO WORD": E->A sub, L deleted: 2 errors over 11 characters.
    result = compute_cer(["HELLO WORLD"], ["HALLO  WORD"])
    assert result.metric == "CER"
    assert result.stats == ErrorStats(num_ref=11, dels=1, subs=1)
    assert compute_cer(["AB CD"], ["ABCD"]).stats == ErrorStats(num_ref=5, dels=1)
    assert compute_cer(["AB CD"], ["ABCD"], keep_spaces=False).stats == ErrorStats(num_ref=4)
    assert text_to_chars(" A  B ") == ("A", "\u2581", "B")


def test_summary_line():
    stats = ErrorStats(num_ref=48, ins=1, dels=0, subs=1)
    assert stats.summary() == "%WER 4.17 [ 2 / 48, 1 ins, 0 del, 1 sub ]"
    assert stats.summary("CER").startswith("%CER 4.17 [")


def _brute_force_distance(ref, hyp):
    if not ref:
        return len(hyp)
    if not hyp:
        return len(ref)
    return min(
        _brute_force_distance(ref[1:], hyp) + 1,
        _brute_force_distance(ref, hyp[1:]) + 1,
        _brute_force_distance(ref[1:], hyp[1:]) + (ref[0] != hyp[0]),
    )


def test_matrix_against_brute_force():
    rng = random.Random(0)
    for _ in range(100):
        ref = [rng.choice("ABC") for _ in range(rng.randint(0, 6))]
        hyp = [rng.choice("ABC") for _ in range(rng.randint(0, 6))]
        assert edit_distance_matrix(ref, hyp)[-1, -1] == _brute_force_distance(ref, hyp)


def test_agrees_with_kaldialign():
    rng = random.Random(1)
    vocab = ["A", "B", "C", "D", "E"]
    for _ in range(300):
        ref = [rng.choice(vocab) for _ in range(rng.randint(0, 20))]
        hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 20))]
        pairs = align(ref, hyp)
        stats = ErrorStats.from_alignment(pairs)
        expected = kaldialign.edit_distance(ref, hyp)
        assert stats.errors == expected["total"], (ref, hyp)
        # the alignment really transforms ref into hyp
        assert [r for r, _ in pairs if r is not None] == ref
        assert [h for _, h in pairs if h is not None] == hyp
        assert stats.num_ref == len(ref) and stats.ins - stats.dels == len(hyp) - len(ref)


def test_counts_and_alignments_are_kaldis():
    """Minimum-edit alignments can split one distance differently (``A B`` -> ``B C``: two
    substitutions, or a deletion and an insertion); the insertion, deletion and substitution
    counts are those of Kaldi's compute-wer (kaldialign's edit_distance) and the alignment that
    of icefall's error files (kaldialign's align), on random short strings of few words, where
    such ties are common."""
    rng = random.Random(3)
    for _ in range(2000):
        vocab = rng.choice(["AB", "ABC", "ABCDE"])
        ref = [rng.choice(vocab) for _ in range(rng.randint(0, 9))]
        hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 9))]
        pairs = align(ref, hyp)
        stats = ErrorStats.from_alignment(pairs)
        expected = kaldialign.edit_distance(ref, hyp)
        assert (stats.ins, stats.dels, stats.subs) == (
            expected["ins"], expected["del"], expected["sub"]
        ), (ref, hyp)
        assert [("*" if r is None else r, "*" if h is None else h) for r, h in pairs] == [
            tuple(pair) for pair in kaldialign.align(ref, hyp, "*")
        ]
    stats = compute_wer(["A B"], ["B C"]).stats
    assert (stats.ins, stats.dels, stats.subs) == (1, 1, 0)


def test_batched_alignment_equals_single(monkeypatch):
    import asr.metrics.wer as wer

    rng = random.Random(2)
    refs = [[rng.choice("ABCD") for _ in range(rng.randint(0, 25))] for _ in range(60)]
    hyps = [[rng.choice("ABCD") for _ in range(rng.randint(0, 25))] for _ in range(60)]
    single = [align(r, h) for r, h in zip(refs, hyps)]
    assert wer.align_batch(refs, hyps) == single
    monkeypatch.setattr(wer, "_MAX_CELLS", 2000)  # many small batches
    assert wer.align_batch(refs, hyps) == single
    for ref, hyp, pairs in zip(refs, hyps, single):
        expected = kaldialign.edit_distance(ref, hyp)["total"]
        assert ErrorStats.from_alignment(pairs).errors == expected


def test_phrase_recall_and_recogs_round_trip(tmp_path):
    from asr.metrics.wer import compute_wer, phrase_recall, read_recognitions, write_recognitions

    refs = ["A BIG ZEPPELIN", "THE GOLDEN GATE", "NO"]
    hyps = ["A BIG ZEPPELIN", "THE GOLD GATE", ""]
    ids = ["u1", "u2", "u3"]
    path = tmp_path / "recogs.txt"
    write_recognitions(path, compute_wer(refs, hyps, ids))
    assert read_recognitions(path) == (dict(zip(ids, refs)), dict(zip(ids, hyps)))
    phrases = {"u1": "ZEPPELIN", "u2": "GOLDEN GATE", "u3": "NO"}
    assert phrase_recall(phrases, dict(zip(ids, hyps))) == (1, 3)
    assert phrase_recall({"u1": "BIG ZEP"}, {"u1": "A BIG ZEPPELIN"}) == (0, 1)  # whole words


def test_phrase_recall_finds_a_phrase_anywhere_and_a_missing_hypothesis_says_nothing():
    from asr.metrics.wer import phrase_recall

    assert phrase_recall({"u": "A B"}, {"u": "A B"}) == (1, 1)  # the whole hypothesis
    assert phrase_recall({"u": "B C"}, {"u": "A B C"}) == (1, 1)  # at its end
    assert phrase_recall({"u": "A B"}, {"u": "A B C"}) == (1, 1)  # at its start
    assert phrase_recall({"u": "A B C D"}, {"u": "A B C"}) == (0, 1)  # longer than it
    assert phrase_recall({"u": "A", "v": "B"}, {"u": "A"}) == (1, 2)  # no hypothesis for v


def test_text_files_break_lines_only_at_newlines(tmp_path):
    """NEL, LINE SEPARATOR, form feed and a lone CR inside a transcript are part of its line (as
    in Kaldi's line reader), not the start of another utterance; CRLF ends a line."""
    from asr.metrics.wer import read_kaldi_text, read_phrases

    path = tmp_path / "text"
    path.write_bytes("u1 A\x85B C\nu2 D\u2028E\r\nu3 F\x0cG\nu4 H\rI\r\n".encode())
    assert read_kaldi_text(path) == {"u1": "A B C", "u2": "D E", "u3": "F G", "u4": "H I"}
    path.write_bytes("u1 A\u2028B\nu1 C\n".encode())
    with pytest.raises(ValueError,
                       match=r"text:2: duplicated utterance id 'u1' \(first on line 1\)"):
        read_kaldi_text(path)  # the file's own line numbers
    phrases = tmp_path / "phrases.tsv"
    phrases.write_bytes("u1\tA\u2029B\r\nu2\tC\rD\n".encode())
    assert read_phrases(phrases) == {"u1": "A B", "u2": "C D"}


@pytest.mark.parametrize("words", ["['A', 'B'", "[1, 2]", "['A'] x", "'A B'"])
def test_a_malformed_recogs_line_is_an_error_naming_the_file_and_line(tmp_path, words):
    from asr.metrics.wer import read_recognitions

    path = tmp_path / "recogs.txt"
    path.write_text(f"u1:\tref=['A']\nu1:\thyp={words}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"recogs.txt:2: "):
        read_recognitions(path)
