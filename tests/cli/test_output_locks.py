"""A made output is written by one run at a time, and a killed run's leftovers go with the next.

Every command whose output a second run on the same path could also write (``asr lm``,
``asr bpe``, ``asr export-package``, ``asr export-onnx``, ``asr average``, ``asr decode``,
``asr transcribe --output-dir``; ``asr shar`` in ``tests/data/test_shar.py``,
``asr prepare fbank`` in ``tests/data/test_prepare_rerun.py`` and ``asr train``, its experiment
directory, in ``tests/cli/test_train.py``) holds an exclusive ``flock`` on ``.<name>.lock`` beside
it: a second run is refused at once, naming the output, and writes nothing. The lock is held here
by a second process, as a concurrent run holds it. A directory output is built in a locked hidden
staging directory; a killed run leaves one (``.<name>.tmp-*``, or ``.<name>.old-*`` while it
replaced an earlier output) that no process holds, and the next run removes it, never one that a
live process holds.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import soundfile

from asr.cli.main import main
from asr.fileio import STAGING_MARKER, output_lock
from asr.testing.packages import random_experiment
from asr.testing.tiny import TINY_SENTENCES, random_speech_like

#: Holds an exclusive flock on argv[1] (a file, created if needed, or a directory) until its
#: stdin closes.
_HOLDER = """
import fcntl, os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY) if os.path.isdir(path) else os.open(path, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def _held_by_another_process(path: Path) -> Iterator[None]:
    """``path`` locked by a live second process while the block runs."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield
    finally:
        proc.stdin.close()
        proc.wait(30)


def _lock_of(output: Path) -> Path:
    return output.with_name(f".{output.name}.lock")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """A random-weight tiny transducer experiment (no training)."""
    return random_experiment(tmp_path_factory.mktemp("locks"), head="transducer")


@pytest.fixture(scope="module")
def package(experiment, tmp_path_factory) -> Path:
    from asr.package import export_package

    out = tmp_path_factory.mktemp("locks_package") / "package"
    export_package(experiment, out)
    return out


def _texts(tmp_path: Path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("".join(f"{text}\n" for text in TINY_SENTENCES))
    return path


def _commands(tmp_path: Path, experiment: Path, package: Path) -> dict[str, tuple[list, Path]]:
    """name -> (the command line, its output)."""
    texts = _texts(tmp_path)
    lm, lang = tmp_path / "lm.arpa", tmp_path / "lang"
    pkg, onnx = tmp_path / "pkg", tmp_path / "onnx"
    averaged, transcripts = tmp_path / "averaged.safetensors", tmp_path / "transcripts"
    wav = tmp_path / "a.wav"
    soundfile.write(wav, random_speech_like(8000), 16000)
    return {
        "lm": (["lm", "--unit", "word", "--order", "2", "--transcripts", texts,
                "--output", lm], lm),
        "bpe": (["bpe", "--kind", "char", "--transcripts", texts, "--output-dir", lang], lang),
        "export-package": (["export-package", "--exp-dir", experiment, "--output-dir", pkg],
                           pkg),
        "export-onnx": (["export-onnx", "--model", package, "--output-dir", onnx], onnx),
        "average": (["average", "--exp-dir", experiment, "--epoch", "1", "--output", averaged],
                    averaged),
        "transcribe": (["transcribe", wav, "--model", package, "--output-dir", transcripts],
                       transcripts),
    }


@pytest.mark.parametrize("command", ["lm", "bpe", "export-package", "export-onnx", "average",
                                     "transcribe"])
def test_a_second_run_on_the_same_output_is_refused(command, experiment, package, tmp_path,
                                                    caplog):
    """Neither command took a lock: two runs on one output both wrote it, and one's fingerprint
    could end beside the other's LM or tokenizer."""
    args, output = _commands(tmp_path, experiment, package)[command]
    args = [str(a) for a in args]
    with _held_by_another_process(_lock_of(output)):
        assert main(args) == 2
        assert f"{output} is being written by another process" in caplog.text
        assert not output.exists()
    assert main(args) == 0  # once the other run has ended
    assert output.exists() and not _lock_of(output).exists()


@pytest.mark.parametrize("command", ["lm", "bpe", "export-package", "export-onnx", "average",
                                     "transcribe", "decode"])
def test_an_output_that_cannot_be_written_is_a_bad_option(command, experiment, package,
                                                         tmp_path, caplog):
    """Each command mapped the lock's OSError its own way: exit 2 with the raw error (lm, bpe),
    exit 2 with '--output-dir X: cannot write there' (export-package, export-onnx), or exit 1
    with a traceback's last line (average, transcribe, decode). All exit 2 now with one message
    naming the output and the reason, before any work, having written nothing. As root no
    permission stops a write: the lock's place is taken by a directory, or the results'
    directory by a file."""
    if command == "decode":
        label = "transducer_greedy-unwritable"
        (tmp_path / "exp").mkdir()
        for name in ("config.yaml", "epoch-1.pt"):
            (tmp_path / "exp" / name).symlink_to(experiment / name)
        output = tmp_path / "exp" / label / f"wer-summary-test-clean-{label}.txt"
        (tmp_path / "exp" / label).write_text("a file where the results' directory goes\n")
        # a test set whose manifest is there (checked before the weights are read), never read
        (tmp_path / "tests").mkdir()
        with gzip.open(tmp_path / "tests" / "librispeech_cuts_test-clean.jsonl.gz", "wt"):
            pass
        args = ["decode", "--exp-dir", tmp_path / "exp", "--searcher", "greedy", "--epoch", "1",
                "--tag", "unwritable", "--manifest-dir", tmp_path / "tests"]
        reason = f"{tmp_path / 'exp' / label} is a file, not a directory"
    else:
        args, output = _commands(tmp_path, experiment, package)[command]
        _lock_of(output).mkdir()
        reason = f"Is a directory ({_lock_of(output)})"
    before = sorted(tmp_path.rglob("*"))
    assert main([str(a) for a in args]) == 2
    assert f"asr {command}: {output}: cannot write there: {reason}\n" in caplog.text + "\n"
    assert sorted(tmp_path.rglob("*")) == before  # nothing made


def _staging(output: Path, kind: str, name: str) -> Path:
    """A staging directory of ``output`` as a run leaves it: with the marker naming ``output``."""
    path = output.with_name(f".{output.name}.{kind}-{name}")
    path.mkdir()
    (path / STAGING_MARKER).write_text(f"{output.name}\n")
    (path / "model.safetensors").write_bytes(b"half a model")
    return path


@pytest.mark.parametrize("command", ["export-package", "export-onnx"])
def test_a_killed_runs_staging_directories_are_removed_by_the_next(command, experiment, package,
                                                                   tmp_path):
    """A SIGKILLed export left ``.<name>.tmp-*`` (and, while it replaced an earlier output,
    ``.<name>.old-*``) beside the output for ever: every later run made its own beside them."""
    args, output = _commands(tmp_path, experiment, package)[command]
    killed = _staging(output, "tmp", "k1ll3d")
    old = _staging(output, "old", "k1ll3d")
    live = _staging(output, "tmp", "l1ve")  # a live run of another version, building
    other = _staging(tmp_path / "other", "tmp", "k1ll3d")  # another output's
    with _held_by_another_process(live):
        assert main([str(a) for a in args]) == 0
        assert output.is_dir() and not killed.exists() and not old.exists()
        assert (live / "model.safetensors").read_bytes() == b"half a model"
        assert other.exists()
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f".{output.name}"))
    assert hidden == [live.name]


def test_a_run_killed_while_it_builds_leaves_what_the_next_removes(package, tmp_path):
    """The real thing: ``asr export-onnx`` killed (SIGKILL) once its staging directory holds
    its marker; the next run removes it and writes the export. (Killed between the directory's
    ``mkdir`` and its marker, a run leaves an unmarked directory that no later run removes, as
    ``fileio._locked_new_directory`` says: the test waited only for the directory, and on a
    loaded machine it killed the export in that gap.)"""
    out = tmp_path / "onnx"
    proc = subprocess.Popen([sys.executable, "-m", "asr.cli.main", "export-onnx", "--model",
                             str(package), "--output-dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(6000):
            staged = [p for p in tmp_path.iterdir() if p.name.startswith(".onnx.tmp-")
                      and (p / STAGING_MARKER).is_file()]
            if staged or proc.poll() is not None:
                break
            time.sleep(0.01)
        assert staged, "the export ended before it was killed"
    finally:
        proc.kill()
        proc.wait(30)
    assert staged[0].is_dir() and not out.exists()
    assert main(["export-onnx", "--model", str(package), "--output-dir", str(out)]) == 0
    assert out.is_dir() and not staged[0].exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnx.")]


def test_a_second_decode_of_the_same_results_is_refused(trained, caplog, capsys):
    """``asr decode`` took no lock: two runs decoding one test set with one searcher wrote the
    same recogs / errs / summary files, each run's files over the other's. The lock is taken
    before anything is decoded; another test set's results are another output."""
    out = trained / "ctc_greedy-locks"
    summary = out / "wer-summary-test-clean-ctc_greedy-locks.txt"
    args = ["decode", "--exp-dir", str(trained), "--searcher", "ctc_greedy", "--epoch", "2",
            "--tag", "locks", "--parts", "test-clean", "test-clean"]
    with output_lock(summary):  # as another run holds it (flock: per open file, not process)
        assert main(args) == 2
        assert f"{summary} is being written by another process" in caplog.text
        assert not [p for p in out.iterdir() if not p.name.endswith(".lock")]
    assert main(args) == 0  # the part given twice: decoded (and locked) once
    assert capsys.readouterr().out.split() == [str(summary)]
    assert sorted(p.name for p in out.iterdir()) == [
        f"{kind}-test-clean-ctc_greedy-locks.txt" for kind in ("errs", "recogs", "wer-summary")]


def test_a_failed_input_leaves_no_earlier_output_for_it(package, tmp_path, caplog):
    """``asr transcribe --output-dir``: an input that failed kept the file an earlier run wrote
    for it, which looked like this run's transcript (exit status 1 was the only sign); the other
    inputs' files are written and the directory's other files kept."""
    good, bad = tmp_path / "good.wav", tmp_path / "bad.wav"
    for wav in (good, bad):
        soundfile.write(wav, random_speech_like(8000), 16000)
    out = tmp_path / "out"
    args = ["transcribe", str(good), str(bad), "--model", str(package), "--output-dir", str(out),
            "--format", "json"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bad.json", "good.json"]
    (out / "notes.txt").write_text("mine\n")
    bad.write_bytes(b"not audio any more" * 50)
    assert main(args) == 1
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "notes.txt"]
    assert f"removed {out / 'bad.json'}, an earlier run's output for {bad}" in caplog.text
    assert (out / "notes.txt").read_text() == "mine\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


@pytest.mark.parametrize("command", ["export-package", "export-onnx"])
def test_an_output_published_before_the_lock_is_taken_is_refused_under_it(
        command, experiment, package, tmp_path, monkeypatch, caplog):
    """Between an export's first check and its lock another run may publish the output: the
    check under the lock refuses it (exit 2), and that run's output stays as it was."""
    import asr.package as package_module

    args, output = _commands(tmp_path, experiment, package)[command]
    real = package_module.output_lock

    @contextmanager
    def published_meanwhile(path: Path) -> Iterator[None]:
        output.mkdir()
        (output / "theirs.txt").write_text("the other run's")
        with real(path):
            yield

    monkeypatch.setattr(package_module, "output_lock", published_meanwhile)
    assert main([str(a) for a in args]) == 2
    assert f"{output}: exists and holds no " in caplog.text  # --overwrite would not replace it
    assert [p.name for p in output.iterdir()] == ["theirs.txt"]
    assert not _lock_of(output).exists()


@pytest.mark.parametrize("selection", [["--epoch", "1"], ["--last", "1"], ["--checkpoint"]])
def test_a_second_average_to_the_default_output_is_refused_before_it_reads(
        selection, experiment, tmp_path, monkeypatch, caplog):
    """Without ``--output`` the output's name (``averaged-<tag>``) needs the selection, and
    ``asr average`` took its lock only once it had read (and averaged) the checkpoints: a second
    run loaded every one of them before it was refused. The tag comes from the file names."""
    import asr.checkpoints.averaging as averaging
    import asr.checkpoints.selection as selection_module

    if selection == ["--checkpoint"]:
        selection = ["--checkpoint", str(experiment / "epoch-1.pt")]
    tag = {"--epoch": "epoch-1-avg-1", "--last": "last-1-checkpoint-1",
           "--checkpoint": "epoch-1"}[selection[0]]
    output = experiment / f"averaged-{tag}.safetensors"
    reads: list[Path] = []
    real_read, real_load = selection_module.read_model_weights, averaging.safe_torch_load
    monkeypatch.setattr(selection_module, "read_model_weights",
                        lambda path: (reads.append(path), real_read(path))[1])
    monkeypatch.setattr(averaging, "safe_torch_load",
                        lambda path, *a, **k: (reads.append(path), real_load(path, *a, **k))[1])
    args = ["average", "--exp-dir", str(experiment), *selection]
    try:
        with output_lock(output):  # as another run holds it
            assert main(args) == 2
            assert f"{output} is being written by another process" in caplog.text
            assert reads == [] and not output.exists()
        assert main(args) == 0
        assert output.is_file() and reads
    finally:
        output.unlink(missing_ok=True)


def test_average_reports_a_missing_checkpoint_before_a_busy_output(experiment, tmp_path, caplog):
    """The order is kept on purpose: the missing checkpoint is a mistake no wait mends, the busy
    output ends with the other run; both exit 2."""
    output = tmp_path / "averaged.safetensors"
    with _held_by_another_process(_lock_of(output)):
        assert main(["average", "--exp-dir", str(experiment), "--epoch", "9", "--output",
                     str(output)]) == 2
    assert "epoch-9.pt" in caplog.text and "being written by another process" not in caplog.text


@pytest.mark.parametrize("selection", [["--epoch", "9"], ["--last", "5"], ["--checkpoint"]])
def test_export_package_reports_a_missing_checkpoint_before_a_busy_output(
        selection, experiment, tmp_path, caplog):
    """As ``asr average``: the selection is planned from the directory listing before the
    output's lock, so a missing checkpoint (a mistake no wait mends) is reported even while
    another run writes the output; export-package took the lock first and reported the busy
    output. Refused so, it makes nothing."""
    if selection == ["--checkpoint"]:
        selection = ["--checkpoint", str(tmp_path / "none.pt")]
    output = tmp_path / "out" / "pkg"
    args = ["export-package", "--exp-dir", str(experiment), *selection, "--output-dir",
            str(output)]
    missing = {"--epoch": "epoch-9.pt", "--last": "5 requested",
               "--checkpoint": f"checkpoint {tmp_path / 'none.pt'} does not exist"}[selection[0]]
    (tmp_path / "out").mkdir()
    with _held_by_another_process(_lock_of(output)):
        assert main(args) == 2
    assert missing in caplog.text and "being written by another process" not in caplog.text
    _lock_of(output).unlink()
    caplog.clear()
    assert main(args) == 2 and missing in caplog.text
    assert list(tmp_path.rglob("*")) == [tmp_path / "out"]
