"""Every failure a user can cause on the command line ends in one clear line and a non-zero exit
status: no traceback, and the line says what is wrong and what to do."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from asr.cli.main import main
from asr.constants import LOG_FORMAT
from asr.export import export_onnx
from asr.fileio import output_lock

REPO = Path(__file__).resolve().parents[2]


#: Commands :func:`_asr` runs in a process of their own: ``serve`` (one that wrongly starts is
#: ended by the timeout there, not held for ever) and ``train`` (it sets torch's inter-op
#: threads, once per process).
OWN_PROCESS = ("serve", "train")


class _LogLines(logging.Handler):
    """Every record, formatted as ``asr`` writes it to stderr (:data:`LOG_FORMAT`)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _asr(*args: str, stdin: bytes | None = None) -> tuple[int, list[str]]:
    """Runs ``asr ARGS`` as a user would; returns the exit status and the ERROR lines.

    ``main`` of the ``asr`` script, in this process (a process of its own costs seconds of
    imports each time) with its log lines as on stderr; :data:`OWN_PROCESS` commands, and any
    with input on ``stdin``, in a process of their own. Either way the failure must be one
    ERROR line, without a traceback.
    """
    if stdin is not None or args[0] in OWN_PROCESS:
        proc = subprocess.run([sys.executable, "-m", "asr.cli.main", *map(str, args)],
                              input=stdin, capture_output=True, timeout=120, cwd=REPO)
        code, err = proc.returncode, proc.stderr.decode()
    else:
        handler, threads = _LogLines(), torch.get_num_threads()
        logging.getLogger().addHandler(handler)
        try:
            code = main(list(map(str, args)))
        except SystemExit as exit_:  # the parser's usage errors
            code = exit_.code
        finally:
            logging.getLogger().removeHandler(handler)
            torch.set_num_threads(threads)  # prepare fbank sets 1 (its --num-jobs processes)
        err = "\n".join(handler.lines)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1, err
    return code, errors


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    t = np.arange(16000) / 16000
    soundfile.write(path, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    return path


def test_a_checkpoint_is_not_a_package(trained, wav):
    code, [line] = _asr("transcribe", wav, "--model", trained / "checkpoint-8.pt")
    assert code == 2
    assert "checkpoint-8.pt is a training checkpoint, not a model package" in line
    assert f"asr export-package --exp-dir {trained} --checkpoint" in line


def test_an_experiment_directory_points_to_its_package(trained, beam_package, wav, tmp_path):
    code, [line] = _asr("transcribe", wav, "--model", trained)
    assert code == 2 and "is an experiment directory (asr train), not a model package" in line
    assert f"--output-dir {trained / 'package'}" in line
    exp = tmp_path / "exp"
    exp.mkdir()
    for name in ("config.yaml", "checkpoint-8.pt"):
        shutil.copy(trained / name, exp / name)
    shutil.copytree(beam_package, exp / "package")
    code, [line] = _asr("serve", "--model", exp, "--port", "0")
    assert code == 2 and f"its package is {exp / 'package'}" in line
    code, [line] = _asr("serve", "--model", tmp_path / "nothing", "--port", "0")
    assert code == 2 and "nothing: no such model package directory" in line


def test_a_searcher_the_model_cannot_run(beam_package, wav, capsys):
    """(Every searcher of this package streams now; asr.decoding tests the ones that do not.)
    A name no model has is argparse's usage error, before the model is read."""
    code, [line] = _asr("transcribe", wav, "--model", beam_package, "--streaming",
                        "--searcher", "attention_rescoring")
    assert code == 2
    assert "searcher 'attention_rescoring' needs an 'aed' head" in line
    assert "available searchers: [" in line
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["transcribe", str(wav), "--model", str(beam_package), "--searcher", "nonesuch"])
    assert stop.value.code == 2
    assert "argument --searcher: unknown searcher 'nonesuch'" in capsys.readouterr().err


def test_subtitles_from_a_searcher_without_token_times(wav, tmp_path):
    """aed_beam gives no token times: srt / vtt are refused before anything is decoded (they
    were one cue of the whole transcript, 40 ms long at 0:00), while json works, without
    timestamps; the cue maker refuses such a result too (a caller of the API)."""
    from asr.cli.transcribe import format_result
    from asr.runtime.offline import load_model
    from asr.testing.packages import random_package

    package = random_package(tmp_path / "aed", head="aed")
    for fmt in ("srt", "vtt"):
        code, [line] = _asr("transcribe", wav, "--model", package, "--format", fmt)
        assert code == 2
        assert f"--format {fmt} needs token times, which searcher aed_beam does not give" in line
    proc = subprocess.run([sys.executable, "-m", "asr.cli.main", "transcribe", str(wav),
                           "--model", str(package), "--format", "json"], capture_output=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr.decode()
    assert '"timestamps": []' in proc.stdout.decode()
    [result] = load_model(package).transcribe(str(wav))
    assert result.tokens and result.timestamps == ()
    with pytest.raises(ValueError, match="tone.wav: subtitles need token times"):
        format_result(result, "srt", with_source=False)


def test_a_missing_lm_is_a_bad_search_option(beam_package, wav, tmp_path):
    """Exit status 2 before any audio is decoded, as for every bad search option (the LM was
    read only when the first batch was searched, and failed as an unexpected error)."""
    for mode in ([], ["--streaming"]):
        code, [line] = _asr("transcribe", wav, "--model", beam_package, *mode,
                            "--set", f"search.lm_path={tmp_path / 'none.arpa'}")
        assert code == 2 and "asr transcribe: " in line and "none.arpa" in line, line
        assert "FileNotFoundError" not in line


@pytest.mark.parametrize("command", ["transcribe", "serve", "decode"])
def test_cuda_without_a_gpu(command, trained, beam_package, wav, monkeypatch, caplog):
    """A device this machine lacks is a bad ``--device``, named as the recipes' early check of
    ``asr decode``'s options names it (the message did not say which option was wrong)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = {"transcribe": ["transcribe", str(wav), "--model", str(beam_package)],
            "serve": ["serve", "--model", str(beam_package), "--port", "0"],
            "decode": ["decode", "--exp-dir", str(trained), "--searcher", "greedy"]}[command]
    assert main([*argv, "--device", "cuda"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"asr {command}: argument --device: device cuda: no CUDA GPU is available "
                      "here; use cpu or auto"]


def test_raw_pcm_on_stdin(beam_package):
    pcm = (np.random.default_rng(0).standard_normal(16000) * 3000).astype("<i2").tobytes()
    code, [line] = _asr("transcribe", "-", "--model", beam_package, stdin=pcm)
    assert code == 1
    assert "<stdin>: cannot decode audio" in line and "raw PCM has no header" in line
    assert "BytesIO" not in line and "ffmpeg -f s16le" in line


def test_an_unexpected_failure_is_one_line(tmp_path):
    bad = tmp_path / "recipe.yaml"
    bad.write_text("train: [unclosed\n")
    proc = subprocess.run([sys.executable, "-m", "asr.cli.main", "train", "--config", str(bad),
                           "--exp-dir", str(tmp_path / "exp")], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr


def test_a_streaming_chunking_the_server_cannot_use(beam_package):
    code, [line] = _asr("serve", "--model", beam_package, "--port", "0", "--chunk-size", "0")
    assert code == 2 and "chunk_size (--chunk-size) must be > 0 encoder frames, got 0" in line
    code, [line] = _asr("serve", "--model", beam_package, "--port", "0", "--engine",
                        "sherpa-onnx", "--left-chunks", "-1")
    assert code == 2 and "the chunking is fixed in the exported graphs" in line
    code, [line] = _asr("serve", "--model", beam_package, "--port", "0", "--engine",
                        "sherpa-onnx", "--max-left-seconds", "5")
    assert code == 2 and "drop --chunk-size, --left-chunks and --max-left-seconds" in line
    code, [line] = _asr("serve", "--model", beam_package, "--port", "0", "--left-chunks", "-1",
                        "--max-left-seconds", "-3")
    assert code == 2 and "(--max-left-seconds) must be a positive number of seconds" in line


def test_int8_without_the_sherpa_onnx_engine_is_refused(tmp_path, caplog):
    """`asr serve --int8 --model PKG` served the float32 PyTorch model without a word: --int8
    selects sherpa-onnx's int8 graphs, and the PyTorch runtime has none. Refused before the
    model is loaded (so a package that is not there is not the error)."""
    from asr.cli.main import main

    assert main(["serve", "--model", str(tmp_path / "none"), "--port", "0", "--int8"]) == 2
    assert caplog.messages[-1] == (
        "asr serve: --int8 selects the int8 graphs of --engine sherpa-onnx; the PyTorch runtime "
        "has no int8 model: add --engine sherpa-onnx or drop --int8")


def test_a_text_file_that_is_not_utf8_is_named(tmp_path):
    """Python's UnicodeDecodeError names neither the file nor the line (and a recipe YAML's
    failed as an unexpected error, exit 1)."""
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("u1 CAFÉ AU LAIT\nu2 GARÇON\n".encode("latin-1"))
    good = tmp_path / "good.txt"
    good.write_text("u1 CAFE\nu2 GARCON\n")
    for command in (["wer", good, latin1], ["wer", latin1, good],
                    ["bpe", "--transcripts", latin1, "--output-dir", tmp_path / "lang"],
                    ["lm", "--unit", "word", "--transcripts", latin1, "--output", tmp_path / "a"],
                    ["train", "--config", latin1, "--exp-dir", tmp_path / "exp"]):
        code, [line] = _asr(*command)
        assert code == 2, line
        assert f"{latin1}:1: not UTF-8 text (byte 0xc9 at column 7)" in line, line
    assert not (tmp_path / "lang").exists() and not (tmp_path / "exp").exists()


def test_an_output_path_in_the_way_fails_before_the_work(trained, beam_package, wav, tmp_path):
    """A directory where a file is to be written (or a file where a directory is) was found only
    when the result was written: after the work, as an unexpected error naming a temporary."""
    a_file, a_dir = tmp_path / "a_file.txt", tmp_path / "a_dir"
    a_file.write_text("u1 A B\n")
    a_dir.mkdir()
    cases = [
        (["transcribe", wav, "--model", beam_package, "--output-dir", a_file],
         f"--output-dir {a_file} is a file, not a directory"),
        (["transcribe", wav, "--model", beam_package, "--output-dir", a_file / "sub"],
         f"--output-dir {a_file / 'sub'}: {a_file} is a file, not a directory"),
        (["average", "--exp-dir", trained, "--last", "1", "--output", a_dir],
         f"--output {a_dir} is a directory; give a file name"),
        (["wer", a_file, a_file, "--report", a_dir], f"--report {a_dir} is a directory"),
        (["wer", a_file, a_file, "--recogs", a_dir], f"--recogs {a_dir} is a directory"),
        (["lm", "--unit", "word", "--transcripts", a_file, "--output", a_dir],
         f"--output {a_dir} is a directory"),
        (["bpe", "--kind", "char", "--transcripts", a_file, "--output-dir", a_file],
         f"--output-dir {a_file} is a file, not a directory"),
        (["prepare", "shuffle", "--cuts", a_file, "--output", a_dir],
         f"--output {a_dir} is a directory"),
        (["synthesize", "--root", a_file, "--num-utts", "test-clean=1"],
         f"--root {a_file} is a file, not a directory"),
    ]
    for command, message in cases:
        code, [line] = _asr(*command)
        assert code == 2 and message in line, line
    assert a_file.read_text() == "u1 A B\n" and not any(a_dir.iterdir())


def test_wer_makes_the_directory_of_its_reports(tmp_path):
    text = tmp_path / "text"
    text.write_text("u1 A B\n")
    proc = subprocess.run([sys.executable, "-m", "asr.cli.main", "wer", str(text), str(text),
                           "--report", str(tmp_path / "new" / "errs.txt")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "new" / "errs.txt").is_file()


def test_exp_dir_that_is_not_an_experiment(beam_package, tmp_path):
    """average / decode / export-package said '<dir> holds no checkpoint-N.pt' for a missing
    directory or a model package, which hid what was given wrong."""
    for command in (["average", "--last", "1"], ["decode", "--searcher", "greedy"],
                    ["export-package", "--output-dir", tmp_path / "pkg"]):
        code, [line] = _asr(*command, "--exp-dir", tmp_path / "none")
        assert code == 2 and f"--exp-dir {tmp_path / 'none'}: no such experiment directory" in line
        code, [line] = _asr(*command, "--exp-dir", beam_package)
        assert code == 2, line
        assert f"--exp-dir {beam_package} is a model package (asr export-package)" in line
    assert not (tmp_path / "pkg").exists()


def test_use_averaged_model_names_a_missing_epoch_checkpoint(trained, tmp_path):
    """--epoch past the last trained epoch with --use-averaged-model (run.sh's default) was
    taken for checkpoints a running training deleted: chosen again 3 times, then "deleted
    before they were read ... wait for it to end", for a training long over. Both epochs read
    (the end and the one before the averaged ones) are named, with the epochs there."""
    lone = tmp_path / "lone"  # epoch 2 without epoch 1, which --epoch 2 --avg 1 starts from
    lone.mkdir()
    for name in ("config.yaml", "epoch-2.pt"):
        shutil.copy(trained / name, lone / name)
    for exp, epoch, missing, found in ((trained, "3", "epoch-3.pt", "[1, 2]"),
                                       (lone, "2", "epoch-1.pt", "[2]")):
        for command in (["average"], ["decode", "--searcher", "greedy"],
                        ["export-package", "--output-dir", tmp_path / "pkg"]):
            code, [line] = _asr(*command, "--exp-dir", exp, "--epoch", epoch, "--avg", "1",
                                "--use-averaged-model")
            assert code == 2, line
            assert f"missing epoch checkpoints: {exp / missing} (found epochs {found})" in line
            assert "deleted" not in line
    assert not (tmp_path / "pkg").exists() and not list(trained.glob("averaged-epoch-3-*"))


def test_a_relative_path_of_the_experiment_not_found_here_says_what_to_do(trained, tmp_path,
                                                                        monkeypatch):
    """The recipes train with relative paths (tokenizer_dir: data/lang_bpe_500), which
    `asr decode` reads from the current directory: run elsewhere, it said only
    "data/lang_bpe_500: no tokenizer found" or "cut manifest ... does not exist". A relative
    path of this command line's --set is the user's own: it was told to run from the
    training's directory too, which was wrong advice; it is told the directory it was read
    from now."""
    import yaml

    from asr.checkpoints.io import safe_torch_load, save_weights

    config = yaml.safe_load((trained / "config.yaml").read_text())
    root = Path(config["tokenizer_dir"]).parent  # holds lang_char/ and fbank/
    # an experiment whose own config holds relative paths (a weights file: its config is read)
    relative = tmp_path / "relative"
    relative.mkdir()
    config["tokenizer_dir"], config["data"]["manifest_dir"] = "lang_char", "elsewhere"
    (relative / "config.yaml").write_text(yaml.safe_dump(config))
    weights = relative / "weights.safetensors"
    save_weights(safe_torch_load(trained / "epoch-2.pt")["model"], weights)
    own = ["decode", "--exp-dir", relative, "--checkpoint", weights, "--searcher", "greedy"]
    decode = ["decode", "--exp-dir", trained, "--searcher", "greedy"]
    monkeypatch.chdir(tmp_path)
    # the test sets are checked first, before the weights are read: given here, to get on
    code, [line] = _asr(*own, "--manifest-dir", root / "fbank")
    assert code == 2 and "lang_char: no tokenizer found" in line, line
    assert (f"(tokenizer_dir lang_char of {relative} is relative to the directory `asr train` "
            f"ran in, and was looked for in the current directory {tmp_path}: run from the "
            "training's directory (a recipe's --work-dir), or pass --set tokenizer_dir=DIR)"
            ) in line
    code, [line] = _asr(*decode, "--set", "tokenizer_dir=lang_char")
    assert code == 2 and "lang_char: no tokenizer found" in line, line
    assert (f"(tokenizer_dir lang_char of this command line's --set is read from the current "
            f"directory {tmp_path}, which has no lang_char: give a path from there, or an "
            "absolute one)") in line and "asr train` ran in" not in line, line
    code, [line] = _asr(*decode, "--set", f"tokenizer_dir={tmp_path / 'lang'}")
    assert code == 2 and "no tokenizer found" in line and "asr train` ran in" not in line, line
    monkeypatch.chdir(root)
    code, [line] = _asr(*own)
    assert code == 2 and "cut manifest elsewhere/librispeech_cuts_test-clean" in line, line
    assert (f"(data.manifest_dir elsewhere of {relative} is relative to the directory `asr "
            f"train` ran in, and was looked for in the current directory {root}: ") in line
    assert line.endswith("or pass --manifest-dir DIR)"), line
    code, [line] = _asr(*decode, "--set", "tokenizer_dir=lang_char", "data.manifest_dir=mine")
    assert code == 2 and "cut manifest mine/librispeech_cuts_test-clean" in line, line
    assert line.endswith(f"(data.manifest_dir mine of this command line's --set is read from "
                         f"the current directory {root}, which has no mine: give a path from "
                         "there, or an absolute one)"), line
    code, [line] = _asr(*decode, "--set", "tokenizer_dir=lang_char", "--manifest-dir", "mine")
    assert code == 2 and "cut manifest mine/" in line and "asr train` ran in" not in line, line
    # the directory is here, a part is not: no advice to run elsewhere
    code, [line] = _asr(*decode, "--set", "tokenizer_dir=lang_char", "data.manifest_dir=fbank",
                        "--parts", "nonesuch")
    assert code == 2 and "cut manifest fbank/librispeech_cuts_nonesuch" in line, line
    assert "asr train` ran in" not in line, line


def test_prepare_and_shar_options_out_of_range(tmp_path):
    """--num-jobs 0 failed inside lhotse (an AssertionError or ValueError, exit 1), and
    --perturb-parts without --speed-perturb exited without an ERROR line."""
    cuts = tmp_path / "cuts.jsonl.gz"
    cuts.write_bytes(b"")
    cases = [
        (["shar", "--cuts", cuts, "--output-dir", tmp_path / "shar", "--num-jobs", "0"],
         "num_jobs must be >= 1, got 0"),
        (["prepare", "manifests", "--corpus-dir", tmp_path, "--parts", "p", "--output-dir",
          tmp_path / "m", "--num-jobs", "0"], "--num-jobs must be >= 1, got 0"),
        (["prepare", "fbank", "--manifest-dir", tmp_path, "--parts", "p", "--output-dir",
          tmp_path / "f", "--num-jobs", "0"], "--num-jobs must be >= 1, got 0"),
        (["prepare", "fbank", "--manifest-dir", tmp_path, "--parts", "train", "--output-dir",
          tmp_path / "f", "--perturb-parts", "train"], "--perturb-parts needs --speed-perturb"),
    ]
    for command, message in cases:
        code, [line] = _asr(*command)
        assert code == 2 and message in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cuts.jsonl.gz"]


def test_export_onnx_chunking_without_streaming(beam_package, tmp_path):
    """--chunk-size / --left-chunks were dropped without a word in an offline export (a bad
    option: exit 2, tests/cli/test_exit_status.py)."""
    for option in ("--chunk-size", "--left-chunks"):
        code, [line] = _asr("export-onnx", "--model", beam_package, "--output-dir",
                            tmp_path / "onnx", option, "4")
        assert code == 2 and "pass streaming=True (--streaming)" in line, line
    assert not (tmp_path / "onnx").exists()


def test_decode_onnx_bad_options(beam_package, tiny_corpus, tmp_path):
    """--max-active-paths 0 crashed sherpa-onnx (SIGSEGV), --batch-size 0 said 'range() arg 3
    must not be zero', a missing --hotwords-file was reported as a missing bpe.vocab."""
    onnx = tmp_path / "onnx"
    export_onnx(beam_package, onnx)  # what `asr export-onnx --model ... --output-dir ...` does
    common = ["decode-onnx", "--onnx-dir", onnx, "--manifest-dir", tiny_corpus / "fbank",
              "--output-dir", tmp_path / "out"]
    beam = ["--decoding-method", "modified_beam_search"]
    for options, message in (
            ([*beam, "--max-active-paths", "0"], "max_active_paths must be >= 1, got 0"),
            (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
            ([*beam, "--hotwords-file", tmp_path / "none.txt"],
             f"hotwords file {tmp_path / 'none.txt'} does not exist")):
        code, [line] = _asr(*common, *options)
        assert code == 2 and message in line, line
    assert not (tmp_path / "out").exists()
    busy = tmp_path / "out" / "wer-summary-test-clean-sherpa-onnx-transducer.txt"
    with output_lock(busy):  # as another run decoding the same set holds it
        code, [line] = _asr(*common)
    assert code == 2 and f"{busy} is being written by another process" in line, line
    assert not (tmp_path / "out").exists()  # the lock's directory goes with the lock


def test_a_missing_hotwords_file_is_named(beam_package, wav, tmp_path):
    """It was read as inline phrases: the error named a word of its path ('hotword 'none' has
    characters the model's tokenizer does not know')."""
    missing = tmp_path / "none" / "hotwords.txt"
    for mode in ([], ["--streaming"]):
        code, [line] = _asr("transcribe", wav, "--model", beam_package, *mode,
                            "--hotwords", missing)
        assert code == 2 and f"hotwords file {missing} does not exist" in line, line


def test_a_file_that_is_no_cut_manifest_is_named(tmp_path):
    """Cut manifests are read lazily: a text file or a broken gzip failed later with a bare
    'Expecting value: line 1 column 1 (char 0)' or gzip error that named no file."""
    text, broken = tmp_path / "text.jsonl", tmp_path / "broken.jsonl.gz"
    text.write_text("HELLO WORLD\n")
    broken.write_bytes(b"\x1f\x8b\x08\x00 broken")  # gzip by its first bytes (as it is read)
    for manifest, message in ((text, f"{text} is not a lhotse cut manifest: its first line is "
                                     "'HELLO WORLD'"),
                              (broken, f"cut manifest {broken} cannot be read")):
        code, [line] = _asr("shar", "--cuts", manifest, "--output-dir", tmp_path / "shar")
        assert code == 2 and message in line, line
        # prepare shuffle shuffled a text file's lines into a "manifest" without a word
        code, [line] = _asr("prepare", "shuffle", "--cuts", manifest, "--output",
                            tmp_path / "shuf.jsonl.gz")
        assert code == 2 and message in line, line
    assert not (tmp_path / "shar").exists() and not (tmp_path / "shuf.jsonl.gz").exists()


def test_an_unknown_log_level_is_a_usage_error():
    """--log-level FOO was taken as INFO without a word."""
    proc = subprocess.run([sys.executable, "-m", "asr.cli.main", "--log-level", "FOO", "wer",
                           "--help"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "'FOO' is none of DEBUG, INFO, WARNING, ERROR" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "asr.cli.main", "wer", "--log-level", "debug",
                           "--help"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0


def test_a_checkpoint_that_is_not_one(trained, tmp_path):
    """torch's weights-only error spanned several lines and advised weights_only=False (which
    would run the file's code); a directory was said not to exist."""
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    proc = subprocess.run([sys.executable, "-m", "asr.cli.main", "average", "--exp-dir",
                           str(trained), "--checkpoint", str(text), "--output",
                           str(tmp_path / "w.safetensors")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert f"cannot load checkpoint {text}" in line and "UnpicklingError: " in line, line
    assert "weights_only" not in line
    code, [line] = _asr("average", "--exp-dir", trained, "--checkpoint", tmp_path,
                        "--output", tmp_path / "w.safetensors")
    assert code == 2 and f"checkpoint {tmp_path} is a directory" in line


def test_train_into_a_model_package_or_a_file_is_refused(trained, beam_package, tmp_path):
    """asr train took a model package as its --exp-dir: it rewrote the package's config.yaml
    (breaking its checksums) and wrote checkpoints into it."""
    package = tmp_path / "package"
    shutil.copytree(beam_package, package)
    before = {p.name: p.read_bytes() for p in package.iterdir() if p.is_file()}
    code, [line] = _asr("train", "--config", trained / "config.yaml", "--exp-dir", package,
                        "--set", "train.max_steps=1", "--num-threads", "1")
    assert code == 2 and f"--exp-dir {package} is a model package" in line, line
    assert {p.name: p.read_bytes() for p in package.iterdir() if p.is_file()} == before
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x\n")
    code, [line] = _asr("train", "--config", trained / "config.yaml", "--exp-dir", a_file)
    assert code == 2 and f"--exp-dir {a_file} is a file, not an experiment directory" in line


def test_ctrl_c_while_a_command_loads_or_runs_exits_130_in_one_line(monkeypatch, capsys, caplog):
    """Ctrl-C while ``asr serve`` imports torch and its modules (seconds) used to end in a
    KeyboardInterrupt traceback; while the command runs it already ended in one line."""
    import importlib

    from asr.cli import main as cli_main

    def interrupted(name, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(importlib, "import_module", interrupted)
        assert cli_main.main(["serve", "--model", "x"]) == 130
    assert capsys.readouterr().err.strip() == "asr serve: interrupted"

    def run(args):
        raise KeyboardInterrupt

    from asr.cli import wer

    monkeypatch.setattr(wer, "run", run)
    assert cli_main.main(["wer", "a", "b"]) == 130
    assert "asr wer: interrupted" in caplog.text


@pytest.mark.parametrize("command", [
    ["decode", "--exp-dir", "EXP", "--searcher", "greedy", "--parts"],
    ["decode-onnx", "--onnx-dir", "ONNX", "--manifest-dir", "M", "--parts"],
    ["prepare", "manifests", "--corpus-dir", "C", "--parts"],
    ["prepare", "fbank", "--parts"],
])
@pytest.mark.parametrize("part", ["../x", "a/b", "..", ""])
def test_a_part_that_is_a_path_is_refused(command, part, capsys):
    """A part names files inside the given directories (librispeech_cuts_<part>.jsonl.gz,
    recogs-<part>-...): '--parts ../x' put result files and locks outside the output
    directory. Refused by the parser, exit 2, before anything is read or written."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command, part])
    assert exit_info.value.code == 2
    assert f"--parts: {part!r} is not a part name" in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["decode", "--exp-dir", "EXP", "--searcher", "greedy", "--tag"],
    ["decode-onnx", "--onnx-dir", "ONNX", "--manifest-dir", "M", "--tag"],
])
@pytest.mark.parametrize("tag", ["../x", "a/b", "a\\b", "a\tb", "a\nb"])
def test_a_tag_that_is_a_path_or_holds_control_characters_is_refused(command, tag, capsys):
    """``--tag`` suffixes the result files' and directory's names: '--tag ../x' put them (and
    their locks) elsewhere, a tab or newline went into a file name. Refused by the parser,
    exit 2, before anything is read or written."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command, tag])
    assert exit_info.value.code == 2
    assert f"--tag: {tag!r} is not a tag (part of a file name" in capsys.readouterr().err


def test_an_onnx_export_is_not_a_package_and_says_what_takes_it(wav, tmp_path):
    """An ``asr export-onnx`` directory given as a package said only 'metadata.json: missing
    package file'; it now says what it is and which commands take it."""
    export = tmp_path / "onnx-stream"
    export.mkdir()
    (export / "export.json").write_text("{}", encoding="utf-8")
    code, [line] = _asr("transcribe", wav, "--model", export)
    assert code == 2
    assert f"{export} is an asr export-onnx directory (ONNX graphs for sherpa-onnx), not a " \
           "model package" in line
    assert f"asr serve --engine sherpa-onnx --model {export}" in line
    assert f"asr decode-onnx --onnx-dir {export}" in line
    code, [line] = _asr("serve", "--model", export, "--port", "0")
    assert code == 2 and "is an asr export-onnx directory" in line


def test_a_package_is_not_an_onnx_export_and_says_how_to_export_it(tmp_path):
    """A model package given to the sherpa-onnx paths said only 'export.json: not an asr
    export-onnx directory'; it now says it is a package and how to export its graphs."""
    package = tmp_path / "package"
    package.mkdir()
    (package / "metadata.json").write_text("{}", encoding="utf-8")
    expected = (f"{package} is a model package (asr export-package), not an asr export-onnx "
                f"directory: export its graphs with asr export-onnx --model {package}")
    code, [line] = _asr("serve", "--engine", "sherpa-onnx", "--model", package, "--port", "0")
    assert code == 2 and expected in line and "--streaming" in line
    code, [line] = _asr("decode-onnx", "--onnx-dir", package, "--manifest-dir", tmp_path)
    assert code == 2 and expected in line
