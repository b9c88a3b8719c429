from __future__ import annotations

import re

from asr.cli.main import main


def test_wer_cli(tmp_path, capsys):
    ref = tmp_path / "ref.txt"
    hyp = tmp_path / "hyp.txt"
    ref.write_text("u1 THE CAT SAT ON THE MAT\nu2 A B\nu3 C D\n")
    hyp.write_text("u1 THE BAT SAT THE MAT TODAY\nu2 A B\n")  # u3 missing: 2 deletions
    report = tmp_path / "errs.txt"
    recogs = tmp_path / "recogs.txt"
    argv = ["wer", str(ref), str(hyp), "--report", str(report), "--recogs", str(recogs)]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == "%WER 50.00 [ 5 / 10, 1 ins, 3 del, 1 sub ]"
    assert report.read_text().startswith("%WER 50.00 [ 5 / 10, 1 ins, 3 del, 1 sub ]\n")
    assert "u3:\thyp=[]" in recogs.read_text()
    assert main(["wer", str(ref), str(hyp), "--strict"]) == 2


def test_cer_cli_and_errors(tmp_path, capsys):
    ref = tmp_path / "ref.txt"
    hyp = tmp_path / "hyp.txt"
    ref.write_text("u1 HELLO WORLD\n")
    hyp.write_text("u1 HALLO WORD\n")
    assert main(["wer", "--cer", str(ref), str(hyp)]) == 0
    assert capsys.readouterr().out.strip() == "%CER 18.18 [ 2 / 11, 0 ins, 1 del, 1 sub ]"
    hyp.write_text("u1 HALLO\nu9 EXTRA\n")
    assert main(["wer", str(ref), str(hyp)]) == 2  # id not in the references
    hyp.write_text("u1 A\nu1 B\n")
    assert main(["wer", str(ref), str(hyp)]) == 2  # duplicated id
    assert main(["wer", str(ref), str(tmp_path / "missing")]) == 2


def test_the_recogs_of_a_cer_score_hold_the_texts_and_score_again_alike(tmp_path, capsys):
    """`asr wer --cer --recogs R` wrote characters and ``▁`` as the units: read back, each
    character was a word, so `asr wer R --cer` scored 'H ▁ E ...' (8 errors in 36, not 4 in 19)
    and `asr wer R` printed that CER as a WER."""
    ref, hyp, recogs = tmp_path / "ref.txt", tmp_path / "hyp.txt", tmp_path / "recogs.txt"
    ref.write_text("u1 HELLO WORLD\nu2 GOOD DAY\n")
    hyp.write_text("u1 HELO WORLD\nu2 GOOD DAY TO\n")
    for metric, expected in (("--cer", "%CER 21.05 [ 4 / 19, 3 ins, 1 del, 0 sub ]"),
                             (None, "%WER 50.00 [ 2 / 4, 1 ins, 0 del, 1 sub ]")):
        flag = [metric] if metric else []
        assert main(["wer", str(ref), str(hyp), *flag]) == 0
        direct = capsys.readouterr().out.strip()
        assert direct == expected
        assert main(["wer", str(ref), str(hyp), "--cer", "--recogs", str(recogs)]) == 0
        capsys.readouterr()
        assert "u1:\tref=['HELLO', 'WORLD']" in recogs.read_text()
        assert main(["wer", str(recogs), *flag]) == 0
        assert capsys.readouterr().out.strip() == direct


def test_phrase_recall_cli_refuses_phrase_files_it_would_misread(tmp_path, capsys, caplog):
    """A line without a tab or a phrase, or phrases of utterances the references do not hold
    (another set's list), are errors naming the file (and line), not a recall computed from an
    empty phrase (found in every hypothesis) or from ids counted as misses."""
    ref, hyp, phrases = tmp_path / "ref.txt", tmp_path / "hyp.txt", tmp_path / "phrases.tsv"
    ref.write_text("u1 A BIG ZEPPELIN\nu2 THE GOLDEN GATE\n")
    hyp.write_text("u1 A BIG ZEPPELIN\nu2 THE GOLD GATE\n")
    phrases.write_text("u1\tBIG  ZEPPELIN\r\nu2\tGOLDEN GATE\n")
    assert main(["wer", str(ref), str(hyp), "--phrases", str(phrases)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "phrase recall 50.00% (1/2)"
    bad = {
        "u1\tZEPPELIN\nu2 GOLDEN GATE\n": "phrases.tsv:2: expected 'utt_id<TAB>phrase'",
        "u1\tZEPPELIN\nu2\t \n": "phrases.tsv:2: expected 'utt_id<TAB>phrase'",
        "u1\tZEPPELIN\nu1\tBIG\n": "phrases.tsv:2: duplicated utterance id 'u1'",
        "u1\tZEPPELIN\nu9\tGOLDEN GATE\n": "1 ids of .*phrases.tsv are not in .*ref.txt",
    }
    for text, message in bad.items():
        phrases.write_text(text)
        caplog.clear()
        assert main(["wer", str(ref), str(hyp), "--phrases", str(phrases)]) == 2
        assert any(re.search(message, r.getMessage()) for r in caplog.records), text


def test_a_repeated_utterance_id_is_an_error_naming_both_lines(tmp_path, capsys, caplog):
    """Which of two texts of one id to score is ambiguous: REF, HYP and each side of a recogs
    file name an utterance once; the error names the file, the id and both lines, and nothing
    is scored or written (a recogs file kept the last of two ref= lines silently)."""
    ref, hyp, recogs = tmp_path / "ref.txt", tmp_path / "hyp.txt", tmp_path / "recogs.txt"
    report = tmp_path / "errs.txt"
    ref.write_text("u1 A B\nu2 C\n\nu1 A\n")
    hyp.write_text("u1 A B\nu2 C\n")
    assert main(["wer", str(ref), str(hyp), "--report", str(report)]) == 2
    assert f"{ref}:4: duplicated utterance id 'u1' (first on line 1)" in caplog.text
    assert main(["wer", str(hyp), str(ref)]) == 2  # as HYP
    recogs.write_text("u1:\tref=['A']\nu1:\thyp=['A']\nu1:\tref=['B']\n")
    caplog.clear()
    assert main(["wer", str(recogs), "--report", str(report)]) == 2
    assert f"{recogs}:3: duplicated utterance id 'u1' (first on line 1)" in caplog.text
    assert capsys.readouterr().out == "" and not report.exists()


def test_references_without_words_are_said_to_leave_the_rate_undefined(tmp_path, capsys, caplog):
    """No reference word (an empty file, or the wrong one): the rate is undefined, which only
    "0.00" or "inf" on stdout did not say."""
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref.write_text("u1\nu2\n")
    for text, printed, rate in (("u1\nu2\n", "%WER 0.00 [ 0 / 0,", "0.00"),
                                ("u1 A\nu2\n", "%WER inf [ 1 / 0, 1 ins,", "inf")):
        hyp.write_text(text)
        caplog.clear()
        assert main(["wer", str(ref), str(hyp)]) == 0
        assert capsys.readouterr().out.startswith(printed)
        assert f"{ref} holds no reference words: the WER is undefined (printed as {rate})" in (
            caplog.text)
    hyp.write_text("u1 A\nu2 B\n")
    ref.write_text("u1 A\nu2 C\n")
    caplog.clear()
    assert main(["wer", str(ref), str(hyp)]) == 0
    assert "undefined" not in caplog.text


def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path, capsys):
    """A reference file saved with a UTF-8 byte order mark (Windows editors) made its first id
    '\\ufeffu1': 'u1' of the hypotheses was then an id not in the references (exit 2)."""
    ref, hyp, recogs = tmp_path / "ref.txt", tmp_path / "hyp.txt", tmp_path / "recogs.txt"
    ref.write_bytes("\ufeffu1 A B\nu2 C\n".encode())
    hyp.write_text("u1 A B\nu2 D\n")
    assert main(["wer", str(ref), str(hyp), "--recogs", str(recogs)]) == 0
    assert capsys.readouterr().out.startswith("%WER 33.33 [ 1 / 3,")
    recogs.write_bytes(b"\xef\xbb\xbf" + recogs.read_bytes())
    assert main(["wer", str(recogs)]) == 0
    assert capsys.readouterr().out.startswith("%WER 33.33 [ 1 / 3,")


def test_a_kaldi_text_given_alone_is_an_error_that_asks_for_hyp(tmp_path, caplog):
    """`asr wer ref.txt` (HYP forgotten) said only "ref.txt:1: not a recognition line: 'u1 A B'",
    not that one file is read as a recogs file nor that two text files need REF and HYP."""
    ref = tmp_path / "ref.txt"
    ref.write_text("u1 A B\n")
    assert main(["wer", str(ref)]) == 2
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.getMessage() == (
        f"asr wer: {ref}:1: not a recognition line: 'u1 A B'; given alone, REF is an `asr "
        f"decode` recogs file ('UTT:\\tref=[...]' and 'UTT:\\thyp=[...]' lines): to score "
        f"'utt_id TEXT' files, give both, asr wer REF HYP")


def test_an_input_that_is_not_a_file_is_named_by_its_argument(tmp_path, caplog):
    """A missing HYP said "[Errno 2] No such file or directory: '...'", naming no argument."""
    ref = tmp_path / "ref.txt"
    ref.write_text("u1 A B\n")
    hyp = tmp_path / "hyp.txt"
    cases = {("wer", str(ref), str(hyp)): f"HYP {hyp}: no such file",
             ("wer", str(tmp_path), str(ref)): f"REF {tmp_path}: a directory, not a text file",
             ("wer", str(ref), str(ref), "--phrases", str(tmp_path / "p.tsv")):
                 f"--phrases {tmp_path / 'p.tsv'}: no such file"}
    for argv, message in cases.items():
        caplog.clear()
        assert main(list(argv)) == 2
        assert caplog.messages == [f"asr wer: {message}"]
