"""``asr export-package``, ``asr export-onnx`` and ``asr prepare`` exit with 2 on a bad option or
input, naming it, as the other commands do (1 is for work that failed): each case below exited
with 1 (or, for unreadable audio, with 0), or named no file."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from asr.cli.main import main
from asr.testing.packages import random_experiment


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """A random-weight tiny CTC experiment (no training) and its package beside it."""
    from asr.package import export_package

    exp = random_experiment(tmp_path_factory.mktemp("exit_status"), head="ctc")
    export_package(exp, exp.parent / "package")
    return exp


def _fails(args: list, message: str, caplog) -> None:
    caplog.clear()
    assert main([str(a) for a in args]) == 2, caplog.text
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0], errors


def _not_weights(tmp: Path) -> Path:
    path = tmp / "notes.pt"
    path.write_text("not a checkpoint\n")
    return path


#: id -> (options after ``export-package --exp-dir EXP --output-dir TMP/pkg``, the message),
#: each a function of (EXP, TMP).
EXPORT_PACKAGE_CASES = {
    "missing epoch": lambda exp, tmp: (["--epoch", "9"], "epoch-9.pt"),
    "not a checkpoint": lambda exp, tmp: (["--checkpoint", _not_weights(tmp)],
                                          f"cannot load checkpoint {tmp / 'notes.pt'}"),
    "missing checkpoint": lambda exp, tmp: (["--checkpoint", tmp / "none.pt"],
                                            f"checkpoint {tmp / 'none.pt'} does not exist"),
    "missing tokenizer": lambda exp, tmp: (["--tokenizer-dir", tmp / "none"],
                                           f"tokenizer_dir {tmp / 'none'}"),
    "foreign searcher": lambda exp, tmp: (["--searcher", "aed_beam"], "--searcher aed_beam"),
    "missing LM": lambda exp, tmp: (["--set", f"search.lm_path={tmp / 'none.arpa'}"],
                                    "none.arpa: no such LM file"),
    "unknown search option": lambda exp, tmp: (["--set", "search.beam_sz=2"],
                                               "did you mean 'beam_size'"),
    "a set's WER twice": lambda exp, tmp: (["--wer", "test-clean=1", "--wer", "dev=3",
                                            "--wer", "test-clean=2"],
                                           "--wer gives test-clean more than once"),
}


@pytest.mark.parametrize("case", EXPORT_PACKAGE_CASES)
def test_export_package_bad_input(case, experiment, tmp_path, caplog):
    options, message = EXPORT_PACKAGE_CASES[case](experiment, tmp_path)
    _fails(["export-package", "--exp-dir", experiment, "--output-dir", tmp_path / "pkg",
            *options], message, caplog)
    assert not (tmp_path / "pkg").exists()


@pytest.mark.parametrize("case", ["package exists", "a file above"])
def test_export_package_output_in_the_way(case, experiment, tmp_path, caplog):
    if case == "package exists":
        out, message = experiment.parent / "package", "already exists (pass --overwrite"
    else:
        out = _not_weights(tmp_path) / "pkg"
        message = f"--output-dir {out}: {out.parent} is a file"
    _fails(["export-package", "--exp-dir", experiment, "--output-dir", out], message, caplog)


#: id -> (options of ``export-onnx`` but --output-dir, the message), functions of (EXP, TMP).
EXPORT_ONNX_CASES = {
    "missing package": lambda exp, tmp: (["--model", tmp / "none"],
                                         "no such model package directory"),
    "an experiment": lambda exp, tmp: (["--model", exp], "is an experiment directory (asr "
                                                         "train), not a model package"),
    "chunking offline": lambda exp, tmp: (["--model", exp.parent / "package", "--chunk-size",
                                           "4"], "pass streaming=True (--streaming)"),
    "missing head": lambda exp, tmp: (["--model", exp.parent / "package", "--head",
                                       "transducer"], "--head transducer: the package has heads"),
    "no layout": lambda exp, tmp: (["--model", exp.parent / "package", "--streaming"],
                                   "no streaming CTC layout"),  # a model of the wrong kind
    "opset": lambda exp, tmp: (["--model", exp.parent / "package", "--opset", "11"],
                               "--opset 11: the graphs export at opsets 13"),  # InvalidGraph
}


@pytest.mark.parametrize("case", EXPORT_ONNX_CASES)
def test_export_onnx_bad_input(case, experiment, tmp_path, caplog):
    options, message = EXPORT_ONNX_CASES[case](experiment, tmp_path)
    _fails(["export-onnx", *options, "--output-dir", tmp_path / "onnx"], message, caplog)
    assert not (tmp_path / "onnx").exists()


def test_export_onnx_output_in_the_way(experiment, caplog):
    package = experiment.parent / "package"
    _fails(["export-onnx", "--model", package, "--output-dir", package],
           "which it is made from; choose another output directory", caplog)


def _cuts_of_missing_audio(path: Path, audio: Path) -> None:
    from lhotse import AudioSource, CutSet, Recording
    from lhotse.cut import MonoCut

    recording = Recording(id="r1", sources=[AudioSource("file", [0], str(audio))],
                          sampling_rate=16000, num_samples=16000, duration=1.0)
    CutSet.from_cuts([MonoCut("c1", 0.0, 1.0, 0, recording=recording)]).to_file(path)


def _manifest_dir(tmp: Path, kind: str) -> Path:
    """TMP/KIND/librispeech_cuts_p.jsonl.gz: a text file (``text``) or cuts of missing audio."""
    directory = tmp / kind
    directory.mkdir()
    path = directory / "librispeech_cuts_p.jsonl.gz"
    if kind == "text":
        with gzip.open(path, "wt") as f:
            f.write("HELLO WORLD\n")
    else:
        _cuts_of_missing_audio(path, tmp / "gone.flac")
    return directory


def _cut_short(tmp: Path) -> Path:
    """TMP/short.jsonl.gz: a gzip cut manifest whose first line is whole but not its end."""
    path = tmp / "short.jsonl.gz"
    _cuts_of_missing_audio(path, tmp / "gone.flac")
    data = gzip.compress(gzip.decompress(path.read_bytes()) * 200)
    path.write_bytes(data[: len(data) // 2])
    return path


def _corpus(tmp: Path) -> Path:
    (tmp / "corpus" / "part").mkdir(parents=True)
    return tmp / "corpus"


def _corpus_with_truncated_flac(tmp: Path) -> Path:
    """TMP/corpus/part with one utterance, whose flac lost its last 2000 bytes."""
    import numpy as np
    import soundfile as sf

    chapter = tmp / "corpus" / "part" / "1" / "2"
    chapter.mkdir(parents=True)
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)
    sf.write(chapter / "1-2-3.flac", noise, 16000)
    (chapter / "1-2-3.flac").write_bytes((chapter / "1-2-3.flac").read_bytes()[:-2000])
    (chapter / "1-2.trans.txt").write_text("1-2-3 HELLO\n")
    return tmp / "corpus"


def _a_file(tmp: Path) -> Path:
    (tmp / "a_file").write_text("x\n")
    return tmp / "a_file"


#: id -> (``asr prepare`` arguments, the message), functions of TMP.
_MANIFESTS = ["manifests", "--parts", "part", "--corpus-dir"]
_FBANK = ["fbank", "--parts", "p", "--manifest-dir"]
PREPARE_CASES = {
    "missing part": lambda tmp: (
        [*_MANIFESTS, tmp / "none", "--output-dir", tmp / "out"],
        f"part directory {tmp / 'none' / 'part'} does not exist"),
    "no transcripts": lambda tmp: (
        [*_MANIFESTS, _corpus(tmp), "--output-dir", tmp / "out"],
        "no '*.trans.txt' transcript files found"),
    "truncated flac": lambda tmp: (  # exit 0, with the duration of its intact header
        [*_MANIFESTS, _corpus_with_truncated_flac(tmp), "--output-dir", tmp / "out"],
        f"{tmp / 'corpus' / 'part' / '1' / '2' / '1-2-3.flac'}: truncated or corrupt audio"),
    "manifests output a file": lambda tmp: (  # found after the corpus was read (1)
        [*_MANIFESTS, tmp, "--output-dir", _a_file(tmp)],
        f"--output-dir {tmp / 'a_file'} is a file, not a directory"),
    "missing cuts": lambda tmp: (
        [*_FBANK, tmp / "none", "--output-dir", tmp / "out"],
        f"input cuts {tmp / 'none' / 'librispeech_cuts_p.jsonl.gz'} for part 'p' do not exist"),
    "text as cuts": lambda tmp: (  # exit 2, but 'Expecting value: line 1 column 1 (char 0)'
        [*_FBANK, _manifest_dir(tmp, "text"), "--output-dir", tmp / "out"],
        f"{tmp / 'text' / 'librispeech_cuts_p.jsonl.gz'} is not a lhotse cut manifest"),
    "missing audio": lambda tmp: (  # exit 0, a manifest without the cut
        [*_FBANK, _manifest_dir(tmp, "gone"), "--output-dir", tmp / "out"],
        f"the first: cannot read the recording of cut 'c1' (audio {tmp / 'gone.flac'}): "
        f"{tmp / 'gone.flac'} does not exist"),
    "fbank output a file": lambda tmp: (  # FileExistsError, exit 1
        [*_FBANK, _manifest_dir(tmp, "gone"), "--output-dir", _a_file(tmp)],
        f"--output-dir {tmp / 'a_file'} is a file, not a directory"),
    "missing shuffle input": lambda tmp: (
        ["shuffle", "--cuts", tmp / "none.jsonl.gz", "--output", tmp / "out"],
        f"cut manifest {tmp / 'none.jsonl.gz'} does not exist"),
    "shuffle input cut short": lambda tmp: (  # a bare EOFError past the first line, exit 1
        ["shuffle", "--cuts", _cut_short(tmp), "--output", tmp / "out"],
        f"cut manifest {tmp / 'short.jsonl.gz'} cannot be read: Compressed file ended"),
}


@pytest.mark.parametrize("case", PREPARE_CASES)
def test_prepare_bad_input(case, tmp_path, caplog):
    args, message = PREPARE_CASES[case](tmp_path)
    _fails(["prepare", *args], message, caplog)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.jsonl.gz"))


@pytest.mark.parametrize("wer", ["=5", " =5", "test-clean", "test-clean=x", "test-clean=nan",
                                 "test-clean=inf", "test-clean=-1"])
def test_export_package_refuses_a_wer_without_a_set_name_or_percent(wer, experiment, tmp_path,
                                                                    capsys):
    """``--wer =5`` (no set name) was accepted and recorded a WER of a set named ''; so were
    ``nan``, ``inf`` and negative percents (Python's float() reads them), which metadata.json
    then held as ``NaN``/``Infinity``, tokens no strict JSON reader (jq, JavaScript) takes. Like
    a value without ``=`` or without a number, they are refused by the option's parser (exit 2,
    naming --wer) before anything is written."""
    with pytest.raises(SystemExit) as exited:
        main(["export-package", "--exp-dir", str(experiment), "--output-dir",
              str(tmp_path / "pkg"), "--wer", wer])
    assert exited.value.code == 2
    assert (f"--wer expects NAME=PERCENT with a set name and a finite percent >= 0, got {wer!r}"
            in capsys.readouterr().err)
    assert not (tmp_path / "pkg").exists()
