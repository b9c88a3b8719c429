from __future__ import annotations

import ast

from asr.metrics.wer import compute_wer, format_alignment, write_error_report, write_recognitions


def _result():
    return compute_wer(
        ["THE CAT SAT ON THE MAT", "A B", "HELLO"],
        ["THE BAT SAT THE MAT TODAY", "A B", "HELLO"],
        utt_ids=["utt2", "utt1", "utt3"],
    )


def test_format_alignment():
    pairs = [("A", "A"), ("B", "C"), ("D", None), (None, "E")]
    assert format_alignment(pairs) == "A (B->C) (D->*) (*->E)"


def test_error_report(tmp_path):
    path = tmp_path / "errs.txt"
    write_error_report(path, _result())
    lines = path.read_text().splitlines()
    assert lines[0] == "%WER 33.33 [ 3 / 9, 1 ins, 1 del, 1 sub ]"
    assert lines[1] == (
        "Errors: 1 insertions, 1 deletions, 1 substitutions, over 9 reference words (7 correct)"
    )
    start = lines.index("PER-UTT DETAILS: corr or (ref->hyp)")
    assert lines[start + 1: start + 4] == [
        "utt1:\tA B",
        "utt2:\tTHE (CAT->BAT) SAT (ON->*) THE MAT (*->TODAY)",
        "utt3:\tHELLO",
    ]
    def section(title):
        i = next(k for k, line in enumerate(lines) if line.startswith(title))
        j = lines.index("", i) if "" in lines[i:] else len(lines)
        return lines[i + 1: j]

    assert section("SUBSTITUTIONS:") == ["1   CAT -> BAT"]
    assert section("DELETIONS:") == ["1   ON"]
    assert section("INSERTIONS:") == ["1   TODAY"]
    per_unit = {line.split()[0]: line.split()[1:] for line in section("PER-UNIT STATS:")}
    assert per_unit["THE"] == ["2", "0", "2", "2"]
    assert per_unit["CAT"] == ["0", "1", "1", "0"]
    assert per_unit["BAT"] == ["0", "1", "0", "1"]


def test_frequent_errors_sorted(tmp_path):
    result = compute_wer(["A B", "A C", "C"], ["X B", "X C", "Y"])
    path = tmp_path / "errs.txt"
    write_error_report(path, result)
    lines = path.read_text().splitlines()
    i = lines.index("SUBSTITUTIONS: count ref -> hyp")
    assert lines[i + 1: i + 3] == ["2   A -> X", "1   C -> Y"]


def test_recognitions(tmp_path):
    path = tmp_path / "recogs.txt"
    write_recognitions(path, _result())
    lines = path.read_text().splitlines()
    assert lines[0] == "utt1:\tref=['A', 'B']"
    assert lines[1] == "utt1:\thyp=['A', 'B']"
    assert lines[2].startswith("utt2:\tref=")
    utt, rest = lines[3].split(":\t")
    assert utt == "utt2" and rest.startswith("hyp=")
    assert ast.literal_eval(rest[4:]) == ["THE", "BAT", "SAT", "THE", "MAT", "TODAY"]
    assert len(lines) == 6
