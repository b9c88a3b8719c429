"""Options generated from config dataclasses; the entry point imports only what it runs."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from asr.cli.main import build_parser, main
from asr.cli.options import add_dataclass_arguments, attribute_docs, dataclass_from_args
from asr.constants import IntermixedParser, OldName
from asr.serve.config import ServerConfig

REPO = Path(__file__).resolve().parents[2]


def test_every_server_setting_is_a_flag_with_its_default_and_doc():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, ServerConfig)
    defaults = parser.parse_args([])
    assert dataclass_from_args(ServerConfig, defaults) == ServerConfig()
    docs = attribute_docs(ServerConfig)
    helps = {a.dest: a.help for a in parser._actions if a.dest != "help"}
    for f in dataclasses.fields(ServerConfig):
        assert docs[f.name] and helps[f.name].startswith(docs[f.name])
    args = parser.parse_args(["--port", "0", "--max-connections", "3", "--idle-timeout", "1.5"])
    config = dataclass_from_args(ServerConfig, args)
    assert (config.port, config.max_connections, config.idle_timeout) == (0, 3, 1.5)
    with pytest.raises(ValueError, match="port"):
        dataclass_from_args(ServerConfig, parser.parse_args(["--port", "70000"]))


def test_help_and_version_import_no_subcommand():
    code = ("import sys; from asr.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('asr.cli.') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "['asr.cli.main']"
    assert "decode" in out and "export-package" in out
    version = subprocess.run([sys.executable, "-m", "asr.cli.main", "--version"],
                             capture_output=True, text=True, check=True).stdout
    assert version.startswith("asr 0.")


def test_light_commands_import_neither_the_package_nor_the_runtime():
    """asr.cli.options imported asr.package and asr.runtime.streaming for two constants (a help
    default, the package marker file): ~0.1 s more at the start of ``asr average`` and ``asr
    train``, which use neither."""
    code = ("import sys; from asr.cli.main import build_parser\n"
            "build_parser('average'); build_parser('train')\n"
            "print(sorted(m for m in sys.modules if m == 'asr.package' "
            "or m.startswith('asr.runtime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", ["transcribe", "serve"])
def test_max_left_seconds_help_says_the_runtimes_default(command, capsys):
    from asr.runtime.streaming import DEFAULT_MAX_LEFT_SECONDS, StreamingRecognizer

    assert inspect.signature(StreamingRecognizer).parameters["max_left_seconds"].default is None
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    said = re.search(r"--max-left-seconds S streaming .*?\(default: ([^)]*)\)", text)
    assert said is not None and float(said.group(1)) == DEFAULT_MAX_LEFT_SECONDS


def test_log_level_is_accepted_after_the_subcommand(tmp_path):
    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    ref.write_text("u1 A B\n")
    hyp.write_text("u1 A C\n")
    assert main(["wer", str(ref), str(hyp), "--log-level", "DEBUG"]) == 0


def test_files_are_taken_between_options():
    """``asr transcribe --model PKG a.wav --format json b.wav`` refused ``b.wav`` as an
    unrecognized argument; the files between options are all taken, in order, while nested steps
    (``asr prepare manifests``) and unknown options parse as before."""
    args = build_parser("transcribe").parse_args(
        ["transcribe", "--model", "pkg", "a.wav", "--format", "json", "b.wav", "--streaming",
         "-", "--log-level", "ERROR", "c.wav"])
    assert args.files == ["a.wav", "b.wav", "-", "c.wav"]
    assert (args.format, args.streaming, args.log_level) == ("json", True, "ERROR")
    args = build_parser("prepare").parse_args(
        ["prepare", "manifests", "--corpus-dir", "c", "--parts", "dev-clean"])
    assert (args.prepare_command, args.parts) == ("manifests", ["dev-clean"])
    with pytest.raises(SystemExit):
        build_parser("transcribe").parse_args(["transcribe", "--model", "p", "a.wav", "--bogus"])


def test_files_after_a_double_dash_are_taken():
    """``--`` ends the options, so that a file may start with '-': ``asr transcribe --model P --
    -a.wav`` took ``-a.wav`` before the parsers were intermixed; Python 3.11's intermixed
    parsing drops the ``--`` and refused ``-a.wav`` as an unrecognized argument."""
    args = build_parser("transcribe").parse_args(["transcribe", "--model", "p", "--", "-a.wav"])
    assert args.files == ["-a.wav"]
    args = build_parser("transcribe").parse_args(
        ["transcribe", "--model", "p", "a.wav", "--", "-b.wav", "--format"])
    assert (args.files, args.format) == (["a.wav", "-b.wav", "--format"], "text")


def test_files_after_set_keep_their_order(tmp_path, monkeypatch):
    """``--set`` (several values) took every word after it, files too, and ``asr transcribe``
    moved those files after the others: ``a.wav --set K=V b.wav --format json c.wav`` wrote b's
    transcript after c's. It stops at the first word that is no override now, so the files keep
    the order the user gave, its overrides stay several, and ``--`` still ends the options."""
    parse = build_parser("transcribe").parse_args
    args = parse(["transcribe", "--model", "p", "a.wav", "--set", "search.beam_size=2", "b.wav",
                  "--format", "json", "c.wav"])
    assert (args.files, args.search_overrides) == (["a.wav", "b.wav", "c.wav"],
                                                   ["search.beam_size=2"])
    args = parse(["transcribe", "a.wav", "--set", "search.beam_size=2", "search.lm_weight=0.3",
                  "b.wav", "--model", "p", "--set=search.blank_penalty=1", "c.wav"])
    assert args.files == ["a.wav", "b.wav", "c.wav"]
    assert args.search_overrides == ["search.beam_size=2", "search.lm_weight=0.3",
                                     "search.blank_penalty=1"]
    monkeypatch.chdir(tmp_path)
    Path("take=1.wav").touch()  # a file, though it holds a '='
    args = parse(["transcribe", "--model", "p", "--set", "search.beam_size=2", "take=1.wav",
                  "b.wav", "--", "-c.wav"])
    assert (args.files, args.search_overrides) == (["take=1.wav", "b.wav", "-c.wav"],
                                                   ["search.beam_size=2"])


def test_set_in_a_command_without_files_takes_every_word():
    """``--set`` stopped at the first word without '=' in every command, so in one that takes
    no files (``asr serve``, ``asr export-package``) ``--set search.beam_size=8 search.lm_weight
    0.3`` failed as argparse's "unrecognized arguments: search.lm_weight 0.3", which says
    nothing of the form an override needs. There, where no word can be a file, ``--set`` takes
    every word again, and the overrides' own error says ``search.<field>=VALUE``."""
    from asr.config import ConfigError
    from asr.decoding.config import SearchConfig, override_search

    words = ["--set", "search.beam_size=8", "search.lm_weight", "0.3"]
    for command in (["serve", "--model", "p"], ["export-package", "--exp-dir", "e",
                                                "--output-dir", "o"]):
        args = build_parser(command[0]).parse_args([*command, *words])
        assert args.search_overrides == words[1:], command
        with pytest.raises(ConfigError, match=re.escape("override '0.3': only search options "
                                                        "can be set here (search.<field>=VALUE")):
            override_search(SearchConfig(), args.search_overrides)
        # the help says where the words end, true of both kinds of command
        [sub] = [a for a in build_parser(command[0])._actions
                 if isinstance(a, argparse._SubParsersAction)]
        help_text = sub.choices[command[0]]._option_string_actions["--set"].help
        assert "in a command that takes files, --set ends at the first word" in help_text, help_text


def _subcommand_parsers():
    from asr.cli.main import SUBCOMMANDS, build_parser

    for name in SUBCOMMANDS:
        parser = build_parser(name)
        [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        stack = [(name, sub.choices[name])]
        while stack:  # nested steps too (asr prepare manifests / fbank)
            label, p = stack.pop()
            yield label, p
            for action in p._actions:
                if isinstance(action, argparse._SubParsersAction):
                    stack += [(f"{label} {n}", c) for n, c in action.choices.items()]


def test_every_option_help_shows_its_default():
    """One mechanism (the formatter of asr.cli.main) shows each option's default value; options
    without one say in words what happens without them; flags are off unless given."""
    for label, parser in _subcommand_parsers():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if (not action.option_strings or action.help == argparse.SUPPRESS or action.required
                    or action.nargs == 0 or isinstance(action, argparse._SubParsersAction)):
                continue
            text = formatter._get_help_string(action) % {"default": action.default}
            assert "(default" in text or "(required" in text, (label, action.option_strings, text)
            assert text.count("(default") <= 1, (label, action.option_strings, text)
        assert "(default" in parser.format_help()


def test_one_device_option_and_one_output_spelling():
    devices, outputs = {}, set()
    for label, parser in _subcommand_parsers():
        for action in parser._actions:
            if "--device" in action.option_strings:
                devices[label] = action.default
            outputs |= {o for o in action.option_strings
                        if o.startswith("--out") and action.help != argparse.SUPPRESS}
    assert set(devices) >= {"decode", "transcribe", "serve"}
    assert set(devices.values()) == {"auto"}
    assert outputs == {"--output", "--output-dir"}


def test_one_overwrite_spelling_and_force_its_hidden_alias():
    """"Replace what an earlier run made" was --overwrite in asr export-package, synthesize and
    prepare fbank, and --force in asr bpe, lm and export-onnx. Every one shows --overwrite now,
    and takes the old --force (hidden, warned of as deprecated) for it."""
    having = {}
    for label, parser in _subcommand_parsers():
        shown = {o for a in parser._actions if a.help != argparse.SUPPRESS
                 for o in a.option_strings}
        assert "--force" not in shown, label
        if "--overwrite" in shown:
            having[label] = parser
    assert set(having) >= {"export-package", "synthesize", "prepare fbank", "bpe", "lm",
                           "export-onnx"}
    for label, parser in having.items():
        for option in ("--overwrite", "--force"):
            action = parser._option_string_actions[option]
            assert (action.dest, action.const, action.default) == ("overwrite", True, False), label


def test_an_old_option_name_is_warned_of_as_a_log_line(tmp_path):
    """``asr export-package --out`` logged its deprecation while the arguments were parsed,
    before logging was set up: a bare line without the log prefix, even under ``--log-level
    ERROR``. It is a log line like the others, that the level governs."""
    command = [sys.executable, "-m", "asr.cli.main", "export-package", "--exp-dir",
               str(tmp_path / "missing"), "--out", str(tmp_path / "pkg")]
    shown = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert shown.returncode == 2
    assert re.search(r"^\S+ \S+ WARNING asr\.cli: asr export-package: --out is deprecated; use "
                     r"--output-dir$", shown.stderr, re.MULTILINE), shown.stderr
    quiet = subprocess.run([*command, "--log-level", "ERROR"], capture_output=True, text=True,
                           cwd=REPO)
    assert quiet.returncode == 2 and "deprecated" not in quiet.stderr, quiet.stderr


def test_force_is_warned_of_as_the_old_name_of_overwrite(tmp_path, caplog):
    """``--force``, the hidden old name of ``--overwrite``, was taken without a word while
    ``--out`` said it was deprecated: one rule for old names, each warned of once."""
    assert main(["export-package", "--exp-dir", str(tmp_path / "missing"), "--output-dir",
                 str(tmp_path / "pkg"), "--force", "--force"]) == 2
    assert caplog.text.count("asr export-package: --force is deprecated; use --overwrite") == 1
    caplog.clear()
    assert main(["export-package", "--exp-dir", str(tmp_path / "missing"), "--output-dir",
                 str(tmp_path / "pkg"), "--overwrite"]) == 2
    assert "deprecated" not in caplog.text


def test_transcribe_help_documents_the_output_shapes(capsys):
    with pytest.raises(SystemExit):
        main(["transcribe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "one line per input" in text and "JSON Lines, one object per input" in text
    # an input that fails writes no line or object: the help said one per input
    assert "an input that fails has no output, its error goes to stderr" in text
    assert "(default: auto)" in text and "(default: the package's)" in text


_NO_MODEL = {  # each command with a model that is not there: it applies the threads, then fails
    "transcribe": ["transcribe", "a.wav", "--model", "{tmp}/none"],
    "decode": ["decode", "--exp-dir", "{tmp}/none", "--searcher", "greedy"],
    "serve": ["serve", "--model", "{tmp}/none", "--port", "0"],
}


@pytest.mark.parametrize("command, default", [("transcribe", 0), ("decode", 0), ("serve", 1)])
def test_num_threads_sets_intra_and_inter_op_threads_in_every_model_command(
        command, default, tmp_path, monkeypatch, caplog):
    """asr transcribe had no --num-threads (icefall, sherpa-onnx and WeNet have one); asr decode
    and asr serve set the intra-op threads only. One option now: N sets both, 0 neither; each
    command keeps its default (serve: 1)."""
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("intra", n)))
    monkeypatch.setattr(torch, "set_num_interop_threads", lambda n: calls.append(("inter", n)))
    monkeypatch.setattr(torch, "get_num_interop_threads", lambda: 7)
    args = [a.format(tmp=tmp_path) for a in _NO_MODEL[command]]
    assert main(args + ["--num-threads", "3"]) == 2
    assert calls == [("intra", 3), ("inter", 3)]
    calls.clear()
    assert main(args) == 2
    assert calls == ([("intra", default), ("inter", default)] if default else [])
    calls.clear()
    assert main(args + ["--num-threads", "-1"]) == 2 and not calls
    assert "--num-threads must be >= 0, got -1" in caplog.text


def test_train_num_threads_is_the_shared_option_with_cores_per_process_for_zero(
        tmp_path, monkeypatch, caplog):
    """asr train set the intra-op threads only, and took a negative count as 0; it now applies the
    shared option, 0 meaning the node's cores shared among its processes."""
    import os

    import torch

    import asr.cli.train as train_cli

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("intra", n)))
    monkeypatch.setattr(torch, "set_num_interop_threads", lambda n: calls.append(("inter", n)))
    monkeypatch.setattr(torch, "get_num_interop_threads", lambda: 99)
    monkeypatch.setattr(train_cli, "train_experiment", lambda cfg, exp_dir, dev_cuts: None)
    monkeypatch.setattr(train_cli, "check_data_inputs", lambda cfg: None)  # no data here
    monkeypatch.setattr(train_cli, "check_dev_cuts", lambda cfg: None)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    args = ["train", "--config", str(REPO / "recipes/mini_tts/transformer_transducer.yaml"),
            "--exp-dir", str(tmp_path / "exp")]
    assert main(args + ["--num-threads", "3"]) == 0
    assert calls == [("intra", 3), ("inter", 3)]
    calls.clear()
    assert main(args) == 0
    assert calls == [("intra", 4), ("inter", 4)]
    calls.clear()
    assert main(args + ["--num-threads", "-2"]) == 2 and not calls
    assert "--num-threads must be >= 0, got -2" in caplog.text


@pytest.mark.parametrize("command", ["transcribe", "decode-onnx"])
@pytest.mark.parametrize("score", ["inf", "nan", "-101", "x"])
def test_hotwords_score_out_of_range_is_an_error_naming_the_option(command, score, capsys):
    """``--hotwords-score inf`` (float() takes it) became the override
    ``search.hotwords_score=inf``, read back as a string: "search.hotwords_score: expected a
    number, got 'inf' (a string: write the number without quotes)", naming neither the option
    nor its range."""
    required = {"transcribe": ["--model", "pkg", "a.wav"],
                "decode-onnx": ["--onnx-dir", "d", "--manifest-dir", "m"]}[command]
    with pytest.raises(SystemExit) as exit_info:
        main([command, *required, "--hotwords-score", score])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --hotwords-score: " in err and repr(score) in err
    if score != "x":
        assert "a per-token boost must be in [-100, 100]" in err


def test_average_help_says_a_selection_is_required_as_the_command_does(tmp_path, caplog):
    """`asr average --help` said that without --epoch, --last and --checkpoint the newest
    checkpoint-N.pt is used (the help of decode and export-package), but average refuses that."""
    helps = {}
    for command in ("average", "decode", "export-package"):
        parser = build_parser(command)
        [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        [epoch] = [a for a in sub.choices[command]._actions if "--epoch" in a.option_strings]
        helps[command] = epoch.help
    assert helps["average"] == ("last epoch to use, epoch-N.pt (required: this, --last, "
                                "--val-best or --checkpoint)")
    assert helps["decode"] == helps["export-package"] == (
        "last epoch to use, epoch-N.pt (default: without --epoch, --last, --val-best and "
        "--checkpoint, the newest checkpoint-N.pt)")
    assert main(["average", "--exp-dir", str(tmp_path)]) == 2
    assert "give --epoch E [--avg N], --last N, --val-best N or --checkpoint F" in caplog.text


def test_a_required_option_with_an_old_name_is_missing_in_the_words_of_any_other(capsys):
    """``asr export-package`` without ``--output-dir`` said "one of the arguments --output-dir
    is required" (a group with its hidden old name ``--out``), naming a choice that --help does
    not show, unlike every other required option. It is one of "the following arguments are
    required" now, with the others missing (every command with an old name goes through the
    one rule, ``OldName``); ``--out`` still meets it, warned of, and only for its own parse."""
    parser = build_parser("export-package")
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["export-package"])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "error: the following arguments are required: --exp-dir, --output-dir" in error
    assert "one of the arguments" not in error
    args = parser.parse_args(["export-package", "--exp-dir", "e", "--out", "p"])
    assert (args.output_dir, args.old_option_names) == ("p", [("--out", "--output-dir")])
    with pytest.raises(SystemExit):  # the next parse requires it again
        parser.parse_args(["export-package", "--exp-dir", "e"])
    assert "error: the following arguments are required: --output-dir" in capsys.readouterr().err
    for label, sub in _subcommand_parsers():  # no old name sits in a group of its new one
        for group in sub._mutually_exclusive_groups:
            assert not any(action.help == argparse.SUPPRESS for action in group._group_actions), \
                label


@pytest.mark.parametrize(("command", "words", "message"), [
    ("export-package", ["--out", "a", "--output-dir", "b"],
     "argument --output-dir: given with --out, its old name: give --output-dir alone"),
    ("export-package", ["--output-dir", "b", "--out", "a"],
     "argument --output-dir: given with --out, its old name: give --output-dir alone"),
    ("export-package", ["--output-dir", "b", "--force", "--overwrite"],
     "argument --overwrite: given with --force, its old name: give --overwrite alone"),
    ("bpe", ["--overwrite", "--force"],
     "argument --overwrite: given with --force, its old name: give --overwrite alone"),
])
def test_an_option_and_its_old_name_together_are_refused_naming_both(command, words, message,
                                                                     capsys):
    """``asr export-package --out X --output-dir Y`` wrote into whichever came last without a
    word; an option given with its hidden old name (``OldName``) is a usage error now, in
    every command that has one, whatever their order."""
    parser = build_parser(command)
    base = {"export-package": ["--exp-dir", "e"],
            "bpe": ["--transcripts", "t", "--output-dir", "o"]}
    with pytest.raises(SystemExit) as stop:
        parser.parse_args([command, *base[command], *words])
    assert stop.value.code == 2
    assert f"asr {command}: error: {message}" in capsys.readouterr().err


def test_an_old_name_of_a_required_option_is_refused_in_a_parser_that_would_not_require_it_again():
    """``OldName`` meets a required option by setting its ``required`` to False for one parse;
    only an ``IntermixedParser`` sets it back. In a plain parser the first parse with the old
    name left the option unrequired for every later parse of that parser (a missing
    ``--output-dir`` then parsed as None); that is now a TypeError naming the parser."""
    plain = argparse.ArgumentParser(prog="tool")
    plain.add_argument("--output-dir", required=True)
    plain.add_argument("--out", dest="output_dir", action=OldName, new="--output-dir")
    with pytest.raises(TypeError, match="--out, the old name of the required --output-dir, needs "
                                        "an IntermixedParser.*tool's parser is ArgumentParser"):
        plain.parse_args(["--out", "p"])
    intermixed = IntermixedParser(prog="tool")
    intermixed.add_argument("--output-dir", required=True)
    intermixed.add_argument("--out", dest="output_dir", action=OldName, new="--output-dir")
    assert intermixed.parse_args(["--out", "p"]).output_dir == "p"
    with pytest.raises(SystemExit):
        intermixed.parse_args([])


@pytest.mark.parametrize(("command", "words"), [
    ("transcribe", ["--model", "pkg", "a.wav"]),
    ("serve", ["--model", "pkg"]),
    ("export-package", ["--exp-dir", "e", "--output-dir", "p"]),
])
def test_an_unknown_searcher_name_is_a_usage_error_of_every_command_before_a_model_is_read(
        capsys, command: str, words: list[str]) -> None:
    """``asr decode --searcher`` refuses an unknown name when it parses its command line; the
    commands of a package's search (add_search_arguments) read the model first and only then
    said the name was unknown. All of them refuse it as argparse refuses a bad value."""
    parser = build_parser(command)
    with pytest.raises(SystemExit) as stop:
        parser.parse_args([command, *words, "--searcher", "transducer_bean"])
    assert stop.value.code == 2
    assert "argument --searcher: unknown searcher 'transducer_bean'" in capsys.readouterr().err
    args = parser.parse_args([command, *words, "--searcher", "beam"])
    assert args.searcher == "beam"
