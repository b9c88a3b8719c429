"""The benches' numeric options (tools/bench/_args.py): a value that measures nothing is a usage
error (exit status 2, ``argument --NAME:`` on stderr) before any set-up, in every bench."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from bench_helpers import load_bench

ROOT = Path(__file__).resolve().parents[1]
BENCHES = ("decode", "encoder", "onnx", "rnnt_loss", "serve", "train_throughput", "transcribe")
#: options that take any integer
FREE = {("onnx", "seed"), ("transcribe", "seed")}


def _args_module():
    load_bench("encoder")  # puts the checkout first on sys.path, as every bench does
    from tools.bench import _args

    return _args


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _parser_of(name: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser that ``main`` of bench ``name`` builds (stopped at its parse_args)."""
    bench = load_bench(name)

    def stop(self, args=None, namespace=None):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(_Parsed) as parsed:
        bench.main([])
    return parsed.value.parser


def test_bounded_types_parse_their_range_and_refuse_the_rest():
    args = _args_module()
    assert args.COUNT("1") == 1 and args.NON_NEGATIVE_INT("0") == 0
    assert args.POSITIVE("1e-3") == 1e-3 and args.NON_NEGATIVE("0") == 0.0
    assert args.FINITE("-2.5") == -2.5
    assert args.bounded(int, at_least=2, at_most=3)("3") == 3
    refused = [(args.COUNT, "0"), (args.COUNT, "1.5"), (args.COUNT, "two"),
               (args.NON_NEGATIVE_INT, "-1"), (args.POSITIVE, "0"), (args.POSITIVE, "nan"),
               (args.POSITIVE, "inf"), (args.NON_NEGATIVE, "-0.1"), (args.FINITE, "-inf"),
               (args.bounded(int, at_least=2, at_most=3), "4")]
    for parse, text in refused:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text).replace(".", r"\.")):
            parse(text)
    with pytest.raises(argparse.ArgumentTypeError, match=r"at most 3 \(why not\), got '4'"):
        args.bounded(int, at_most=3, why="why not")("4")


@pytest.mark.parametrize("name", BENCHES)
def test_every_numeric_option_of_a_bench_is_range_checked_and_its_default_passes(name,
                                                                                 monkeypatch):
    """A plain ``type=int`` / ``float`` takes 0, negatives, nan and inf to the set-up; and a
    default must be a value its own option accepts."""
    for action in _parser_of(name, monkeypatch)._actions:
        if action.type in (int, float):
            assert (name, action.dest) in FREE, f"{name} --{action.dest}: unchecked {action.type}"
        elif action.type is not None and action.default is not None:
            defaults = action.default if isinstance(action.default, list) else [action.default]
            for value in defaults:
                if isinstance(value, str):  # argparse parses a string default with the type
                    action.type(value)
                else:
                    assert action.type(str(value)) == value, (name, action.dest)


@pytest.mark.parametrize("name, argv, named", [
    ("decode", ["--batch", "0"], "--batch"),
    ("decode", ["--rtfx", "--batch", "0"], "--batch"),
    ("decode", ["--seconds", "nan"], "--seconds"),
    ("decode", ["--repeats", "0"], "--repeats"),
    ("decode", ["--ratio-repeats", "0"], "--ratio-repeats"),
    ("decode", ["--threads", "0"], "--threads"),
    ("decode", ["--beam-size", "0"], "--beam-size"),
    ("decode", ["--tokens-per-second", "0"], "--tokens-per-second"),
    ("decode", ["--duration-bias", "0", "0", "nan", "0", "0"], "--duration-bias"),
    ("encoder", ["--seconds", "nan"], "--seconds"),
    ("encoder", ["--chunk-sizes", "8", "0"], "--chunk-sizes"),
    ("encoder", ["--repeats", "0"], "--repeats"),
    ("encoder", ["--threads", "-1"], "--threads"),
    ("encoder", ["--presets", ""], "--presets"),
    ("encoder", ["--presets", "tiny,xl"], "--presets"),
    ("onnx", ["--num-files", "0"], "--num-files"),
    ("onnx", ["--batch-size", "0"], "--batch-size"),
    ("onnx", ["--threads", "1", "0"], "--threads"),
    ("onnx", ["--repeat", "0"], "--repeat"),
    ("rnnt_loss", ["--batch", "0"], "--batch"),
    ("rnnt_loss", ["--frames", "0"], "--frames"),
    ("rnnt_loss", ["--tokens", "0"], "--tokens"),
    ("rnnt_loss", ["--vocab", "500", "1"], "--vocab"),
    ("rnnt_loss", ["--joiner-dim", "0"], "--joiner-dim"),
    ("rnnt_loss", ["--prune-range", "0"], "--prune-range"),
    ("rnnt_loss", ["--repeats", "0"], "--repeats"),
    ("rnnt_loss", ["--threads", "0"], "--threads"),
    ("rnnt_loss", ["--case-timeout", "-1"], "--case-timeout"),
    ("serve", ["--streams", "0"], "--streams"),
    ("serve", ["--streams", "4", "65"], "--streams"),
    ("serve", ["--seconds", "61"], "--seconds"),
    ("serve", ["--chunk-seconds", "0"], "--chunk-seconds"),
    ("serve", ["--threads", "-1"], "--threads"),
    ("train_throughput", ["--max-duration", "nan"], "--max-duration"),
    ("train_throughput", ["--max-cut-duration", "-1"], "--max-cut-duration"),
    ("train_throughput", ["--steps", "0"], "--steps"),
    ("train_throughput", ["--warmup", "-1"], "--warmup"),
    ("train_throughput", ["--fit-probes", "-1"], "--fit-probes"),
    ("train_throughput", ["--time-budget", "-1"], "--time-budget"),
    ("train_throughput", ["--fake-memory-limit", "-1"], "--fake-memory-limit"),
    ("train_throughput", ["--threads", "-1"], "--threads"),
    ("train_throughput", ["--fit-dtype", "fp16"], "--fit-dtype"),
    ("transcribe", ["--num-files", "0"], "--num-files"),
    ("transcribe", ["--batch-size", "0"], "--batch-size"),
    ("transcribe", ["--repeat", "0"], "--repeat"),
    ("transcribe", ["--threads", "0"], "--threads"),
])
def test_benches_refuse_values_that_measure_nothing(name, argv, named, capsys):
    """A count of 0 used to print ``inf`` (encoder), or end in a traceback after the set-up
    (median of no runs, max of an empty batch, a division by zero, ``int(nan)``), and a negative
    "0: none" value passed as none: a usage error naming that option instead."""
    bench = load_bench(name)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    assert f"argument {named}: " in capsys.readouterr().err


def test_a_bench_run_as_a_script_refuses_a_bad_count(tmp_path):
    """Run as ``python tools/bench/NAME.py`` (its folder first on sys.path, dropped by onnx.py),
    a bench finds the option types of its own checkout."""
    proc = subprocess.run([sys.executable, str(ROOT / "tools/bench/onnx.py"), "--repeat", "0"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "argument --repeat: must be at least 1, got '0'" in proc.stderr
