"""``asr decode``'s result files of one test set and searcher are consistent as a set: a summary
file present means the recogs and errs beside it are complete and of the run that wrote it."""

from __future__ import annotations

import pytest

import asr.run.evaluate as evaluate
from asr.run.evaluate import Recognition, result_paths, write_results

EARLIER = [Recognition("u1", "a b", "a b"), Recognition("u2", "c", "c")]  # WER 0
LATER = [Recognition("u1", "a b", "x y"), Recognition("u2", "c", "c")]  # WER 66.67


class _Killed(BaseException):
    """Stands for the run's end (SIGKILL, or KeyboardInterrupt) between two of its files."""


def _interrupted(*args, **kwargs):
    raise _Killed


def test_a_rewrite_replaces_every_file_of_the_set(tmp_path):
    write_results(tmp_path, "p", "s", EARLIER)
    wer, paths = write_results(tmp_path, "p", "s", LATER)
    assert wer == pytest.approx(200 / 3)
    assert "hyp=['x', 'y']" in paths["recogs"].read_text()
    assert paths["errs"].read_text().startswith("%WER 66.67")
    assert paths["wer_summary"].read_text().splitlines()[1] == "s\t66.67"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())


@pytest.mark.parametrize("stopped_at", ["write_error_report", "write_text_atomic"])
def test_a_run_stopped_between_its_files_leaves_no_summary(stopped_at, tmp_path, monkeypatch):
    """The files were written one by one with the summary last, but the earlier run's summary
    stayed until then: a run stopped before its errs (or its summary) left the earlier WER
    0.00 beside this run's recogs (and errs), looking like a complete, current set."""
    write_results(tmp_path, "p", "s", EARLIER)
    paths = result_paths(tmp_path, "p", "s")
    assert paths["wer_summary"].read_text().splitlines()[1] == "s\t0.00"
    monkeypatch.setattr(evaluate, stopped_at, _interrupted)
    with pytest.raises(_Killed):
        write_results(tmp_path, "p", "s", LATER)
    assert "hyp=['x', 'y']" in paths["recogs"].read_text()  # this run's, partly written set
    assert not paths["wer_summary"].exists()
    monkeypatch.undo()
    write_results(tmp_path, "p", "s", LATER)  # the next run completes the set
    assert paths["wer_summary"].read_text().splitlines()[1] == "s\t66.67"


def test_a_test_set_without_reference_words_warns_that_its_wer_is_undefined(tmp_path, caplog):
    """Every transcript empty: ``asr decode`` wrote WER inf (or 0.00) without a word, where
    ``asr wer`` warns that the rate is undefined. It now gives that warning (one
    implementation), naming the test set, and still writes the files."""
    for hyp, printed in (("", "0.00"), ("x", "inf")):
        caplog.clear()
        with caplog.at_level("WARNING"):
            wer, paths = write_results(
                tmp_path, "p", "s", [Recognition("u1", "", hyp), Recognition("u2", "", "")]
            )
        assert f"test set p holds no reference words: the WER is undefined (printed as {printed})" \
            in caplog.text
        assert paths["wer_summary"].read_text().splitlines()[1] == f"s\t{printed}"
    caplog.clear()
    with caplog.at_level("WARNING"):
        write_results(tmp_path, "p", "s", LATER)
    assert "undefined" not in caplog.text
