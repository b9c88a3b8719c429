"""``asr decode`` on the tiny trained experiment: icefall-style result files and WER."""

from __future__ import annotations

import logging
import re

from asr.cli.main import main

PART = "test-clean"


def _decode(exp_dir, *args) -> int:
    return main(["decode", "--exp-dir", str(exp_dir), "--parts", PART, *args])


def test_decode_writes_recogs_errs_and_wer_summary(trained, caplog):
    caplog.set_level(logging.INFO)
    assert _decode(trained, "--searcher", "ctc_greedy", "transducer_greedy", "--epoch", "2",
                   "--avg", "2") == 0
    for name in ("ctc_greedy", "transducer_greedy"):
        out = trained / name
        recogs = (out / f"recogs-{PART}-{name}.txt").read_text().splitlines()
        assert len(recogs) == 2 * 4  # ref and hyp line per utterance
        assert recogs[0].split(":\t")[1].startswith("ref=[")
        assert recogs[1].split(":\t")[1].startswith("hyp=[")
        errs = (out / f"errs-{PART}-{name}.txt").read_text()
        assert errs.startswith("%WER ") and "PER-UTT DETAILS" in errs
        summary = (out / f"wer-summary-{PART}-{name}.txt").read_text().splitlines()
        assert summary[0] == "settings\tWER"
        assert summary[1].startswith("weights-epoch-2-avg-2\t")
        assert re.match(r"^\d+\.\d\d$", summary[1].split("\t")[1])
    assert f"{PART} ctc_greedy (epoch-2-avg-2): WER" in caplog.text


def test_decode_search_overrides_and_checkpoint_file(trained):
    checkpoint = trained / "epoch-1.pt"
    assert _decode(trained, "--searcher", "ctc_prefix_beam", "--checkpoint", str(checkpoint),
                   "--set", "search.beam_size=2") == 0
    summary = (trained / "ctc_prefix_beam" / f"wer-summary-{PART}-ctc_prefix_beam.txt").read_text()
    assert "weights-epoch-1_beam_size-2\t" in summary


def test_decode_errors_name_the_problem(trained, caplog):
    assert _decode(trained, "--searcher", "no_such_search") == 2
    assert "unknown searcher" in caplog.text
    assert _decode(trained, "--searcher", "aed_beam") == 2  # the tiny model has no AED head
    # every name is checked before the first is decoded: ctc_greedy's results were written first
    assert _decode(trained, "--searcher", "ctc_greedy", "aed_beam", "--tag", "refused") == 2
    assert "needs an 'aed' head" in caplog.text and not (trained / "ctc_greedy-refused").exists()
    assert _decode(trained, "--searcher", "ctc_greedy", "--set", "search.beam_sz=2") == 2
    assert "did you mean 'beam_size'" in caplog.text
    assert _decode(trained, "--searcher", "ctc_greedy", "--epoch", "7") == 2
    assert "epoch-7.pt" in caplog.text


def test_roles_resolve_per_head_and_summaries_are_printed(trained, capsys):
    """The tiny model has transducer and CTC heads: the roles name the transducer's searchers."""
    assert _decode(trained, "--searcher", "greedy", "beam", "--epoch", "2") == 0
    printed = capsys.readouterr().out.split()
    assert printed == [
        str(trained / name / f"wer-summary-{PART}-{name}.txt")
        for name in ("transducer_greedy", "transducer_beam")
    ]
