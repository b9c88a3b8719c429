"""``asr decode`` on the tiny trained experiment: icefall-style result files and WER."""

from __future__ import annotations

import gzip
import json
import logging
import re
import shutil

import pytest
from manifest_reads import count_manifest_reads

from asr.checkpoints import selection
from asr.cli.main import main
from asr.testing.packages import random_experiment

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


def test_decode_warns_of_a_searcher_whose_head_weighs_0(trained, caplog):
    """A searcher of a head that the experiment's ``heads.loss_weights`` leaves at 0 (built,
    never trained) decoded without a word, while ``asr train --check-only`` warned of it: the
    same warning, and the decode goes on."""
    assert _decode(trained, "--searcher", "ctc_greedy", "transducer_greedy", "--tag", "w0",
                   "--set", "heads.loss_weights={transducer: 1.0, ctc: 0.0}") == 0
    assert ("searcher 'ctc_greedy' decodes with the ctc head, which heads.loss_weights.ctc: 0 "
            "leaves untrained") in caplog.text
    assert "'transducer_greedy' decodes" not in caplog.text
    assert (trained / "ctc_greedy-w0" / f"wer-summary-{PART}-ctc_greedy-w0.txt").is_file()


def test_decode_search_overrides_and_checkpoint_file(trained):
    checkpoint = trained / "epoch-1.pt"
    assert _decode(trained, "--searcher", "ctc_prefix_beam", "--checkpoint", str(checkpoint),
                   "--set", "search.beam_size=2") == 0
    summary = (trained / "ctc_prefix_beam" / f"wer-summary-{PART}-ctc_prefix_beam.txt").read_text()
    assert "weights-epoch-1_beam_size-2\t" in summary


def test_decode_errors_name_the_problem(trained, caplog, capsys):
    with pytest.raises(SystemExit, match="2"):  # a usage error
        _decode(trained, "--searcher", "no_such_search")
    assert "unknown searcher" in capsys.readouterr().err
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


def test_a_test_set_that_repeats_a_cut_id_is_refused_before_any_part_is_written(
        trained, tiny_corpus, tmp_path, caplog):
    """A repeated id was decoded and counted twice in the WER, and written twice into recogs
    and errs: exit 2 naming the file, the id and both lines, and no result file of any part."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for part in ("dev-clean-2", PART):
        shutil.copy(tiny_corpus / "fbank" / f"librispeech_cuts_{part}.jsonl.gz", manifests)
    test_set = manifests / f"librispeech_cuts_{PART}.jsonl.gz"
    lines = gzip.open(test_set, "rb").readlines()
    with gzip.open(test_set, "wb") as f:
        f.writelines([*lines, lines[0]])
    assert _decode(trained, "--searcher", "ctc_greedy", "--tag", "dup", "--manifest-dir",
                   str(manifests), "--parts", "dev-clean-2", PART) == 2
    cut_id = json.loads(lines[0])["id"]
    assert (f"cut id {cut_id!r} occurs twice in an evaluation set: lines 1 and "
            f"{len(lines) + 1} of {test_set}") in caplog.text
    assert not (trained / "ctc_greedy-dup").exists()


def test_each_test_set_is_read_once(trained, tiny_corpus, tmp_path, monkeypatch):
    """The up-front id check read every test manifest, then each searcher's decode of the part
    read it twice more (its ids again, then its cuts): now the checked cuts are decoded."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    parts = ("dev-clean-2", PART)
    for part in parts:
        shutil.copy(tiny_corpus / "fbank" / f"librispeech_cuts_{part}.jsonl.gz", manifests)
    reads = count_manifest_reads(monkeypatch)
    assert _decode(trained, "--searcher", "ctc_greedy", "transducer_greedy", "--tag", "reads",
                   "--manifest-dir", str(manifests), "--parts", *parts) == 0
    assert dict(reads) == {manifests / f"librispeech_cuts_{part}.jsonl.gz": 1 for part in parts}
    for name in ("ctc_greedy", "transducer_greedy"):
        for part in parts:
            recogs = trained / f"{name}-reads" / f"recogs-{part}-{name}-reads.txt"
            assert len(recogs.read_text().splitlines()) == 2 * 4  # every cut, once


def test_a_test_cut_without_a_supervision_is_refused_before_any_part_is_written(
        trained, tiny_corpus, tmp_path, caplog):
    """A cut without a supervision has no reference: asr decode failed inside the dataset with a
    traceback. Now exit 2 naming the part and the cut (as decode-onnx does), nothing written."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    test_set = manifests / f"librispeech_cuts_{PART}.jsonl.gz"
    lines = gzip.open(tiny_corpus / "fbank" / test_set.name, "rb").readlines()
    bare = {**json.loads(lines[0]), "id": "bare", "supervisions": []}
    with gzip.open(test_set, "wb") as f:
        f.writelines([*lines, (json.dumps(bare) + "\n").encode()])
    assert _decode(trained, "--searcher", "ctc_greedy", "--tag", "bare", "--manifest-dir",
                   str(manifests)) == 2
    assert (f"1 cuts of {PART} have no supervision (nothing to transcribe), e.g. cut 'bare'"
            in caplog.text)
    assert not (trained / "ctc_greedy-bare").exists()


def test_an_empty_test_set_is_refused_before_any_part_is_written(
        trained, tiny_corpus, tmp_path, caplog):
    """A test manifest without cuts (a preparation that wrote nothing) was decoded into
    ``%WER 0.00 [ 0 / 0 ...]`` result files, a rate of nothing read as a perfect score: exit 2
    naming the part and its file, and no result file of any part."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    shutil.copy(tiny_corpus / "fbank" / "librispeech_cuts_dev-clean-2.jsonl.gz", manifests)
    test_set = manifests / f"librispeech_cuts_{PART}.jsonl.gz"
    gzip.open(test_set, "wb").close()
    assert _decode(trained, "--searcher", "ctc_greedy", "--tag", "empty", "--manifest-dir",
                   str(manifests), "--parts", "dev-clean-2", PART) == 2
    assert f"test set {PART} ({test_set}) holds no cuts: nothing to score" in caplog.text
    assert not (trained / "ctc_greedy-empty").exists()


def test_a_test_cut_whose_data_file_is_missing_is_refused_before_any_part_is_decoded(
        trained, tiny_corpus, tmp_path, caplog):
    """A test cut whose feature (or audio) file is gone failed when its batch loaded, after the
    parts before it were decoded and written. Now exit 2 naming the part, the cut and the file,
    before any decoding."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for part in ("dev-clean-2", PART):
        lines = gzip.open(tiny_corpus / "fbank" / f"librispeech_cuts_{part}.jsonl.gz",
                          "rb").readlines()
        if part == PART:  # the last part: its cut's file is missing
            cut = json.loads(lines[-1])
            data = cut["features"] if "features" in cut else cut["recording"]["sources"][0]
            key = "storage_path" if "features" in cut else "source"
            data[key] = str(tmp_path / "gone" / "missing.file")
            lines[-1] = (json.dumps(cut) + "\n").encode()
        with gzip.open(manifests / f"librispeech_cuts_{part}.jsonl.gz", "wb") as f:
            f.writelines(lines)
    assert _decode(trained, "--searcher", "ctc_greedy", "--tag", "gone", "--manifest-dir",
                   str(manifests), "--parts", "dev-clean-2", PART) == 2
    assert f"1 cuts of test set {PART} have a missing file" in caplog.text
    assert "missing.file" in caplog.text and cut["id"] in caplog.text
    assert not (trained / "ctc_greedy-gone").exists()


def _swapped_tokenizer(tiny_corpus, directory):
    """The tiny corpus' tokenizer with the pieces of ids 4 and 5 swapped: as many pieces, the
    same parameter shapes, other meanings; returns the pieces."""
    from asr.tokenizers.char import CharTokenizer

    pieces = CharTokenizer.from_file(tiny_corpus / "lang_char" / "tokens.txt").pieces()
    pieces[4], pieces[5] = pieces[5], pieces[4]
    CharTokenizer(pieces).save(directory)
    return pieces


def test_weights_of_another_vocabulary_of_the_same_size_are_refused(
        trained, tiny_corpus, tmp_path, caplog):
    """A tokenizer made again with as many pieces but other ones decoded without a word: every
    id read as another piece. asr decode and export-package now compare the checkpoint's
    recorded vocabulary with the tokenizer's."""
    from asr.checkpoints.selection import WeightSelection
    from asr.package import PackageError, export_package

    pieces = _swapped_tokenizer(tiny_corpus, tmp_path / "lang_swapped")
    override = f"tokenizer_dir={tmp_path / 'lang_swapped'}"
    assert _decode(trained, "--searcher", "ctc_greedy", "--epoch", "2", "--avg", "1",
                   "--tag", "swapped", "--set", override) == 2
    assert re.search(r"epoch-2\.pt: it was trained with another vocabulary than tokenizer_dir "
                     r"\S*lang_swapped \(token 4 is "
                     + re.escape(f"{pieces[5]!r} there and {pieces[4]!r} in"), caplog.text)
    assert not (trained / "ctc_greedy-swapped").exists()
    with pytest.raises(PackageError, match=r"epoch-2\.pt: it was trained with another vocabulary"):
        export_package(trained, tmp_path / "package", WeightSelection(epoch=2, avg=1),
                       tokenizer_dir=tmp_path / "lang_swapped")


def test_an_unknown_searcher_is_a_usage_error_before_the_weights_are_read(tmp_path, capsys,
                                                                          caplog):
    """``asr decode --searcher greedy nonesuch`` read (and averaged) the weights, built the
    model and only then said "unknown searcher": a name no model has is argparse's error now,
    exit 2 at once, as any bad value of an option; ``all`` and the roles stay names."""
    with pytest.raises(SystemExit) as stop:
        main(["decode", "--exp-dir", str(tmp_path / "exp"), "--searcher", "greedy", "nonesuch"])
    assert stop.value.code == 2
    assert "argument --searcher: unknown searcher 'nonesuch'; expected one of [" in \
        capsys.readouterr().err
    assert caplog.text == ""  # nothing was read
    for names in (["all"], ["greedy", "beam", "ctc_greedy"]):  # on to the experiment
        assert main(["decode", "--exp-dir", str(tmp_path / "exp"), "--searcher", *names]) == 2
    assert caplog.text.count("no such experiment directory") == 2


def test_a_searcher_the_heads_lack_is_refused_before_the_weights_are_read(tmp_path, caplog,
                                                                        monkeypatch):
    """``asr decode --epoch 2 --avg 2 --searcher aed_beam`` on a model without an AED head read
    and averaged the weights, then said "needs an 'aed' head": the searchers are checked
    against the heads of the experiment's config.yaml first, reading no weights, and so is a
    missing test set; an untrained head's searcher is still warned of once."""
    exp = random_experiment(tmp_path / "work", head="transducer", num_epochs=2)
    reads = []
    original = selection.read_weights

    def counted(plan):
        reads.append(plan.tag)
        return original(plan)

    monkeypatch.setattr(selection, "read_weights", counted)
    assert main(["decode", "--exp-dir", str(exp), "--searcher", "ctc_greedy", "aed_beam",
                 "--epoch", "2", "--avg", "2"]) == 2
    assert "searcher 'aed_beam' needs an 'aed' head" in caplog.text
    assert reads == []
    assert main(["decode", "--exp-dir", str(exp), "--searcher", "ctc_greedy", "--parts", "none",
                 "--manifest-dir", str(tmp_path)]) == 2
    assert f"cut manifest {tmp_path / 'librispeech_cuts_none.jsonl.gz'} does not exist" in \
        caplog.text
    assert reads == []
    caplog.clear()
    with gzip.open(tmp_path / "librispeech_cuts_empty.jsonl.gz", "wt"):
        pass
    assert main(["decode", "--exp-dir", str(exp), "--searcher", "ctc_greedy", "--parts", "empty",
                 "--manifest-dir", str(tmp_path),
                 "--set", "heads.loss_weights={transducer: 1.0, ctc: 0.0}"]) == 2
    assert reads == ["checkpoint-2"]  # on to the weights and the cuts of the test set
    assert "test set empty" in caplog.text and "holds no cuts" in caplog.text
    assert caplog.text.count("searcher 'ctc_greedy' decodes with the ctc head") == 1
