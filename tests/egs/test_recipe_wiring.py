"""The recipe scripts' own logic, against a stub ``asr`` (no model, no data, a second each): option
checking, which files the stages hand each other, and failures that must stop a script."""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRI = REPO / "egs" / "librispeech" / "ASR"
RUN, PREPARE = LIBRI / "run.sh", LIBRI / "prepare.sh"
MINI_TTS = REPO / "egs" / "mini_tts" / "ASR" / "run.sh"
END = "@@end"

# `asr`, `python`, `lhotse` and `torchrun` of the stub venv: records each call's arguments
# (NUL-separated, END after the last), fails the subcommand named in $STUB_FAIL, and prints what the
# scripts read: a WER summary path for the decoders, a report for export-onnx, which with
# $STUB_NO_STREAMING has no streaming layout (as for a TDT, CTC or CIF model: exit 1, or 0 without a
# report with --if-supported). `python -c` of a program that reads JSON and imports no asr (the
# package metadata of egs/shared/sherpa_onnx.sh) runs for real.
STUB = f"""#!/usr/bin/env bash
printf '%s\\0' "$(basename "$0")" "$@" {END} >> "$STUB_LOG"
if [ "$(basename "$0")" = python ] && [ "$1" = -c ] && [[ "$2" == *"import json"* ]] \\
    && [[ "$2" != *asr* ]]; then
  exec {shlex.quote(sys.executable)} "$@"
fi
[ "$1" = "${{STUB_FAIL:-}}" ] && exit 2
case "$1" in
  decode|decode-onnx)
    mkdir -p exp/stub && printf 'settings\\tWER\\nstub\\t1.00\\n' > "exp/stub/wer-summary-$1.txt"
    echo "exp/stub/wer-summary-$1.txt" ;;
  feat)  # lhotse feat extract-cuts ... CUTS_IN CUTS_OUT STORAGE: the output manifest
    : > "${{@: -2:1}}" ;;
  prepare)  # lhotse prepare musan CORPUS OUT: (re)writes every manifest, as lhotse does
    if [ "$2" = musan ]; then
      mkdir -p "$4"
      for kind in recordings_noise recordings_music supervisions_music; do
        echo "$kind ${{STUB_MUSAN:-}}" | gzip > "$4/musan_$kind.jsonl.gz"
      done
    fi ;;
  export-onnx)
    if [ -n "${{STUB_NO_STREAMING:-}}" ] && [[ " $* " == *" --streaming "* ]]; then
      [[ " $* " == *" --if-supported "* ]] && exit 0
      exit 1
    fi
    echo "report" ;;
esac
exit 0
"""


@pytest.fixture
def stub(tmp_path: Path):
    """Runs a script with a stub venv; returns (run, calls): calls() lists the argv of each call
    of the stub `asr` (and with everything=True of `python` and `lhotse`, the program first)."""
    venv_bin = tmp_path / "stub venv" / "bin"  # a path with a space, as every path of the tests
    venv_bin.mkdir(parents=True)
    for program in ("asr", "python", "lhotse", "torchrun"):
        (venv_bin / program).write_text(STUB)
        (venv_bin / program).chmod((venv_bin / program).stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.txt"

    def run(script: Path, *args: str, fail: str = "", no_streaming: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "ASR_VENV": str(tmp_path / "stub venv"), "STUB_LOG": str(log),
               "STUB_FAIL": fail, "STUB_NO_STREAMING": "1" if no_streaming else "", **(env or {})}
        return subprocess.run(["bash", str(script), "--skip-setup", "true", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    def calls(everything: bool = False) -> list[list[str]]:
        if not log.is_file():
            return []
        out, call = [], []
        for line in log.read_text().split("\0")[:-1]:
            if line == END:
                if everything:
                    out.append(call)
                elif call[0] == "asr":
                    out.append(call[1:])
                call = []
            else:
                call.append(line)
        return out

    return run, calls


@pytest.mark.parametrize("script", [RUN, PREPARE, MINI_TTS])
@pytest.mark.parametrize("args, message", [
    (["--stage", "six"], "--stage takes an integer, got 'six'"),
    (["--stop-stage=5x"], "--stop-stage takes an integer, got '5x'"),
    (["--skip-setup", "yes"], "--skip-setup takes true or false, got 'yes'"),
    (["--stage", "3", "extra"], "unexpected argument 'extra'"),
])
def test_options_are_checked_against_their_defaults(stub, tmp_path, script, args, message):
    run, calls = stub
    result = run(script, "--work-dir", str(tmp_path / "work"), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert calls(everything=True) == [] and "done (stages" not in result.stderr


@pytest.mark.parametrize("script", [RUN, PREPARE, MINI_TTS])
@pytest.mark.parametrize("option", [
    "--PATH", "--IFS", "--HOME", "--ROOT", "--HERE", "--usage", "--Stage", "--config",
    "--stage stop-stage",
])
def test_only_the_options_of_the_usage_are_taken(stub, tmp_path, script, option):
    """Any shell variable was an option: --PATH or --IFS overwrote the environment, --ROOT or
    --HERE the script's own paths."""
    run, calls = stub
    result = run(script, "--work-dir", str(tmp_path / "work"), option, "/tmp")
    assert result.returncode == 2, result.stderr
    assert f"unknown option {option}; the options are: --stage --stop-stage " in result.stderr
    assert "--work-dir" in result.stderr.splitlines()[-1]
    assert calls(everything=True) == [] and "done (stages" not in result.stderr


@pytest.mark.parametrize("script", [RUN, PREPARE, MINI_TTS])
def test_a_misspelt_last_option_is_unknown_not_short_of_a_value(stub, tmp_path, script):
    """A typo in the last option (`run.sh --stage 4 --dry-run`) said "option --dry-run needs a
    value", as if it were an option; a known last option still needs its value."""
    run, calls = stub
    result = run(script, "--work-dir", str(tmp_path / "work"), "--dry-run")
    assert result.returncode == 2, result.stderr
    assert "unknown option --dry-run; the options are: --stage --stop-stage " in result.stderr
    result = run(script, "--work-dir", str(tmp_path / "work"), "--stage")
    assert result.returncode == 2 and "option --stage needs a value" in result.stderr
    assert calls(everything=True) == []


def test_an_option_may_be_spelt_with_underscores_as_in_kaldi():
    """Kaldi's (and icefall's) parse_options.sh take --stop_stage for --stop-stage."""
    script = f"""
stage=0
stop_stage=100
usage="Usage: x [--stage N] [--stop-stage N]"
. "{REPO}/egs/shared/parse_options.sh"
echo "$stage $stop_stage"
"""
    result = subprocess.run(["bash", "-c", script, "x", "--stop_stage", "4", "--stage=2"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "4"]


def test_an_option_of_the_usage_needs_its_default():
    """The usage declares the options: one without a default (a script's slip) stops it."""
    script = f"""
stage=0
usage="Usage: x [--stage N] [--stop-stage N]"
. "{REPO}/egs/shared/parse_options.sh"
"""
    result = subprocess.run(["bash", "-c", script, "x", "--stage", "1"], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert "its usage lists --stop-stage, but it sets no default $stop_stage" in result.stderr


def test_an_integer_option_is_read_in_base_10(stub, tmp_path):
    """bash's arithmetic reads a leading 0 as octal: --epoch 09 failed at stage 8, after
    training and decoding ("value too great for base"), and 010 averaged up to epoch 8."""
    run, calls = stub
    (tmp_path / "work" / "exp" / "conformer_transducer").mkdir(parents=True)
    result = run(RUN, "--work-dir", str(tmp_path / "work"), "--stage", "08", "--stop-stage", "8",
                 "--epoch", "09", "--avg", "-0", "--avg", "002")
    assert result.returncode == 0, result.stderr
    assert "average epochs 8..9" in result.stderr and "done (stages 8..8)" in result.stderr
    (average,) = calls()
    assert average[average.index("--epoch") + 1:average.index("--epoch") + 4] == [
        "9", "--avg", "2"]
    assert average[-1].endswith("averaged-epoch-9-avg-2-use-averaged-model.safetensors")


@pytest.mark.parametrize("script", [RUN, PREPARE, MINI_TTS])
def test_an_integer_option_of_more_than_9_digits_is_refused(stub, tmp_path, script):
    """bash's 64-bit arithmetic wraps around: --stage 99999999999999999999 read as a negative
    number, so every stage ran."""
    run, calls = stub
    work = str(tmp_path / "work")
    for bad in ("99999999999999999999", "1000000000", "-18446744073709551615"):
        result = run(script, "--work-dir", work, "--stage", bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert f"--stage takes an integer of at most 9 digits, got '{bad}'" in result.stderr
        assert calls(everything=True) == [] and "done (stages" not in result.stderr
    # leading zeros are no digits of the value
    result = run(script, "--work-dir", work, "--stage", "000000000099", "--stop-stage",
                 "999999999")
    assert result.returncode == 0, result.stderr
    assert "done (stages 99..999999999" in result.stderr


@pytest.mark.parametrize("script", [RUN, MINI_TTS])
def test_a_decimal_option_takes_only_a_number(stub, tmp_path, script):
    """--lm-weight's default is 0.3 / 0.55: a typo used to pass and fail only at the decode stage,
    after training."""
    run, calls = stub
    work = str(tmp_path / "work")
    for bad in ("0.3x", "abc", "", "1.2.3"):
        result = run(script, "--work-dir", work, "--lm-weight", bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert f"--lm-weight takes a number, got '{bad}'" in result.stderr
        assert calls(everything=True) == []
    for good in ("1", "0.4", "-0.5", ".5", "2.", "1e-2", "3E+1"):
        result = run(script, "--work-dir", work, "--lm-weight", good, "--stage", "99",
                     "--stop-stage", "0")
        assert result.returncode == 0, (good, result.stderr)


@pytest.mark.parametrize("script, args, option", [
    (MINI_TTS, ["--searchers", "", "--stage", "5"], "--searchers"),
    (MINI_TTS, ["--searchers", "  "], "--searchers"),
    (RUN, ["--searchers", "", "--stage", "7"], "--searchers"),
    (RUN, ["--test-parts", " ", "--stage", "10"], "--test-parts"),
])
def test_an_empty_list_option_is_refused(stub, tmp_path, script, args, option):
    """mini_tts with --searchers "" decoded nothing at stage 5 and reported success."""
    run, calls = stub
    result = run(script, "--work-dir", str(tmp_path / "work"), *args)
    assert result.returncode == 2, result.stderr
    assert f"{option} is empty; give at least one name" in result.stderr
    assert calls(everything=True) == [] and "done (stages" not in result.stderr




def _mini_tts_stage_3_outputs(work: Path) -> None:
    """What mini_tts stage 3 leaves in ``work`` with the default options: the tokenizer and the
    token LM that the beam searches fuse (empty files: read by no stub)."""
    lang = work / "data" / "lang_bpe_128"
    lang.mkdir(parents=True, exist_ok=True)
    for name in ("bpe.model", "token_6gram.arpa"):
        (lang / name).write_bytes(b"")


@pytest.mark.parametrize("script, refused", [
    (RUN, [("--searchers", "greedy trnasducer_beam", "unknown searcher 'trnasducer_beam'"),
           ("--searchers", "greedy aed_beam", "searcher 'aed_beam' needs an 'aed' head"),
           ("--train-args", "--set train.max_epoch=2", "train.max_epoch"),
           ("--lm-unit", "token", None)]),
    (MINI_TTS, [("--searchers", "greedy trnasducer_beam", "unknown searcher 'trnasducer_beam'"),
                ("--package-searcher", "aed_beam", "searcher 'aed_beam' needs an 'aed' head"),
                ("--beam-size", "0", "search.beam_size must be >= 1, got 0")]),
])
def test_searchers_and_train_args_are_checked_before_the_first_stage(stub, real, tmp_path, script,
                                                                      refused):
    """A misspelt searcher, one the recipe's heads lack, a bad --train-args key or search option
    were found by the decode (or training) stage, after the data preparation and training; they
    are checked by `asr train --check-only` before stage 0 (the real one: the stub's accepts
    anything). A good setting passes the check, which runs nothing."""
    run, _ = stub
    work = str(tmp_path / "work")
    for option, value, message in refused:
        if message is None:
            continue
        result = run(script, "--work-dir", work, option, value, env=real)
        assert result.returncode == 2, (option, result.stderr)
        assert message in result.stderr and "nothing was run" in result.stderr
        assert "stage 0" not in result.stderr and "stage 4" not in result.stderr
        assert not (tmp_path / "work" / "exp").exists()
    if script is RUN:  # the default options pass; stage 6 then fails (no training data)
        _prepared_test_sets(tmp_path / "work")  # what stage 7 would decode, with the LM
        (tmp_path / "work" / "data" / "lang_bpe_500" / "token_4gram.arpa").write_text("")
        result = run(RUN, "--work-dir", work, "--stage", "6", "--stop-stage", "7", "--lm-unit",
                     "token", env=real)
        assert "nothing was run" not in result.stderr and "stage 6: train" in result.stderr
    else:  # the default options pass; the time budget is then too small for training
        _mini_tts_stage_3_outputs(tmp_path / "work")
        result = run(MINI_TTS, "--work-dir", work, "--stage", "4", "--time-budget", "100", env=real)
        assert result.returncode == 1 and "time budget left for training" in result.stderr
    # decode alone: `asr decode` checks the searchers against the trained model at once
    stage = "7" if script is RUN else "5"
    result = run(script, "--work-dir", work, "--stage", stage, "--stop-stage", stage,
                 "--searchers", "trnasducer_beam", env=real)
    assert "nothing was run" not in result.stderr


@pytest.mark.parametrize("script, args, message", [
    (RUN, ["--avg", "31"], "--avg 31 averages more epochs than --epoch 30 has"),
    (RUN, ["--avg", "0"], "--avg must be at least 1, got 0"),
    (RUN, ["--test-parts", "test-clean test-clen"], "--test-parts: unknown 'test-clen'"),
    (RUN, ["--lm-order", "0"], "--lm-order must be at least 1, got 0"),
    (PREPARE, ["--word-lm-order", "-1"], "--word-lm-order must be at least 1, got -1"),
    (RUN, ["--nproc", "0"], "--nproc must be at least 1, got 0"),
    (MINI_TTS, ["--avg", "0"], "--avg must be at least 1, got 0"),
    (MINI_TTS, ["--lm-order", "0"], "--lm-order must be at least 1, got 0"),
    (MINI_TTS, ["--fbank-jobs", "0"], "--fbank-jobs must be at least 1, got 0"),
])
def test_values_a_late_stage_reads_are_refused_before_the_first(stub, tmp_path, script, args,
                                                               message):
    """Each one was found by the stage that reads it: decoding or averaging after training, the
    LMs after hours of fbank."""
    run, calls = stub
    result = run(script, "--work-dir", str(tmp_path / "work"), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and calls(everything=True) == []


@pytest.mark.parametrize("script", [RUN, MINI_TTS])
def test_an_unquoted_train_args_value_is_refused(stub, tmp_path, script):
    """Only "--set" is --train-args' value: the override after it must not be dropped silently."""
    run, calls = stub
    result = run(script, "--work-dir", str(tmp_path / "work"), "--stage", "4",
                 "--train-args", "--set", "train.max_epochs=2")
    assert result.returncode == 2 and "unexpected argument 'train.max_epochs=2'" in result.stderr
    assert calls() == []


def test_a_relative_asr_venv_is_taken_from_the_repository_as_setup_takes_it(stub, tmp_path):
    """The scripts cd into their work directory: a relative ASR_VENV resolved there found no
    `asr` (rc 127) while tools/setup.sh had installed it relative to the repository."""
    run, calls = stub
    relative = os.path.relpath(tmp_path / "stub venv", REPO)
    result = run(RUN, "--work-dir", str(tmp_path / "work"), "--stage", "8", "--stop-stage", "8",
                 env={"ASR_VENV": relative})
    assert result.returncode == 0, result.stderr
    assert calls()[-1][0] == "average"


def test_stage_7_fails_when_it_cannot_tell_whether_the_model_streams(stub, tmp_path):
    """The streaming check failing (here the stub python) read as "not streaming": the
    full-context decode was dropped and the stage passed."""
    run, calls = stub
    args = ["--work-dir", str(tmp_path / "work"), "--stage", "7", "--stop-stage", "7"]
    result = run(RUN, *args, fail="-c")
    assert result.returncode != 0 and "done (stages" not in result.stderr
    assert run(RUN, *args).returncode == 0


def test_typed_options_still_take_their_values(stub, tmp_path):
    run, calls = stub
    result = run(RUN, "--work-dir", str(tmp_path / "work"), "--stage", "-1", "--stop-stage=-1",
                 "--use-shar", "false", "--lm-weight", "0.45", "--train-args", "--set a=1 b=2")
    assert result.returncode == 0, result.stderr
    assert "done (stages -1..-1)" in result.stderr


def test_full_libri_takes_only_true_or_false(stub, tmp_path):
    """`--full-libri yes` used to prepare train-clean-100 only, as `false` does."""
    run, _ = stub
    result = run(PREPARE, "--work-dir", str(tmp_path / "work"), "--full-libri", "yes")
    assert result.returncode == 2 and "--full-libri takes true or false" in result.stderr


def test_stage_9_packages_exactly_what_stage_8_wrote(stub, tmp_path):
    run, calls = stub
    work = tmp_path / "work"
    exp = work / "exp" / "conformer_transducer"
    exp.mkdir(parents=True)
    common = ["--work-dir", str(work), "--epoch", "12", "--avg", "1"]
    averaged = run(RUN, *common, "--stage", "8", "--stop-stage", "8")
    assert averaged.returncode == 0, averaged.stderr
    wanted = "exp/conformer_transducer/averaged-epoch-12-avg-1-use-averaged-model.safetensors"
    assert calls()[-1][0] == "average" and calls()[-1][-2:] == ["--output", wanted]
    # other settings' weights: another --avg whose name starts the same, the plain average
    (exp / "averaged-epoch-12-avg-10-use-averaged-model.safetensors").write_bytes(b"")
    (exp / "averaged-epoch-12-avg-1.safetensors").write_bytes(b"")
    missing = run(RUN, *common, "--stage", "9", "--stop-stage", "9")
    assert missing.returncode == 1 and f"no {wanted}: run stage 8" in missing.stderr
    assert calls()[-1][0] == "average"  # nothing exported
    (work / wanted).write_bytes(b"")
    exported = run(RUN, *common, "--stage", "9", "--stop-stage", "9")
    assert exported.returncode == 0, exported.stderr
    call = calls()[-1]
    assert call[0] == "export-package" and call[call.index("--checkpoint") + 1] == wanted
    plain = run(RUN, *common, "--stage", "9", "--stop-stage", "9", "--use-averaged-model", "false")
    call = calls()[-1]
    assert plain.returncode == 0 and call[call.index("--checkpoint") + 1].endswith(
        "averaged-epoch-12-avg-1.safetensors")


def test_a_failing_sherpa_onnx_decode_fails_stage_10(stub, tmp_path):
    run, calls = stub
    package = tmp_path / "work" / "exp" / "conformer_transducer" / "package"
    package.mkdir(parents=True)
    (package / "metadata.json").write_text('{"streaming": false}')
    result = run(RUN, "--work-dir", str(tmp_path / "work"), "--stage", "10", fail="decode-onnx")
    assert result.returncode == 2, result.stderr
    assert "done (stages" not in result.stderr
    assert [c[0] for c in calls()] == ["export-onnx", "decode-onnx"]


def _lm_texts(work: Path) -> list[str]:
    """Two LM texts in ``work``, their names with spaces (relative: the scripts' work dir)."""
    texts = ["lm texts/a b.txt", "c.txt"]
    for text in texts:
        (work / text).parent.mkdir(parents=True, exist_ok=True)
        (work / text).write_text("A SENTENCE\n")
    return texts


def _assert_whole(calls: list[list[str]], *paths: Path) -> None:
    """No argument of any call is a piece of one of ``paths`` split at a space."""
    pieces = {piece for path in paths for piece in str(path).split(" ")[:-1]}
    assert not [arg for call in calls for arg in call if arg in pieces]


def test_stage_5_keeps_a_corpus_path_with_spaces_whole(stub, tmp_path):
    run, calls = stub
    dl_dir, work = tmp_path / "my corpora", tmp_path / "my work"
    texts = _lm_texts(work)
    result = run(PREPARE, "--work-dir", str(work), "--dl-dir", str(dl_dir), "--full-libri",
                 "false", "--stage", "5", "--lm-text", texts[0], "--lm-text", texts[1])
    assert result.returncode == 0, result.stderr
    check, bpe, token_lm, word_lm = calls()
    assert check == ["bpe", "--check-only", "--vocab-size", "500"]  # no corpus yet: any text's
    assert bpe[:3] == ["bpe", "--transcripts", f"{dl_dir}/LibriSpeech/train-clean-100"]
    assert bpe[3] == "--output-dir"
    for lm in (token_lm, word_lm):  # one --lm-text per file, each kept whole
        start = lm.index("--transcripts") + 1
        assert lm[start:start + 3] == [*texts, "--tokenizer-dir" if lm is token_lm else "--order"]


@pytest.mark.parametrize("script", [RUN, PREPARE])
def test_a_missing_lm_text_is_refused_before_the_first_stage(stub, tmp_path, script):
    """--lm-text used to take a space-separated list: `--lm-text "a.txt b.txt"` is now one file
    name, and a file that is not there was found by stage 5 only, after hours of fbank."""
    run, calls = stub
    work = tmp_path / "work"
    _lm_texts(work)
    result = run(script, "--work-dir", str(work), "--lm-text", "lm texts/a b.txt", "--lm-text",
                 "c.txt d.txt")
    assert result.returncode == 2, result.stderr
    assert "--lm-text 'c.txt d.txt': no such file or directory" in result.stderr
    assert calls(everything=True) == [] and "stage 0" not in result.stderr


def test_every_path_option_may_hold_spaces(stub, tmp_path):
    """The work directory, the corpus directory, the venv and the LM texts, through every stage of
    run.sh that the stub lets run (--lm-text was split at its spaces)."""
    run, calls = stub
    work, dl_dir = tmp_path / "my work", tmp_path / "my corpora"
    for part in ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100"):
        (dl_dir / "LibriSpeech" / part).mkdir(parents=True)
    (dl_dir / "musan").mkdir()
    texts = _lm_texts(work)
    result = run(RUN, "--work-dir", str(work), "--dl-dir", str(dl_dir), "--full-libri", "false",
                 "--lm-text", texts[0], "--lm-text", texts[1], "--stop-stage", "8",
                 "--use-shar", "true")
    assert result.returncode == 0, result.stderr
    made = calls(everything=True)
    _assert_whole(made, work, dl_dir, tmp_path / "stub venv")
    by_name = {tuple(c[:3]): c for c in made}
    assert by_name[("lhotse", "prepare", "musan")][3] == f"{dl_dir}/musan"
    manifests = by_name[("asr", "prepare", "manifests")]
    assert manifests[manifests.index("--corpus-dir") + 1] == f"{dl_dir}/LibriSpeech"
    lms = [c for c in made if c[:2] == ["asr", "lm"]]
    assert len(lms) == 2 and all(c[c.index("--transcripts") + 1:][:2] == texts for c in lms)
    assert [c[1] for c in made if c[0] == "asr"][-3:] == ["train", "decode", "average"]
    (work / "exp" / "transformer_transducer").mkdir(parents=True)  # what the stub train skips
    mini = run(MINI_TTS, "--work-dir", str(work), "--stop-stage", "5")
    assert mini.returncode == 0, mini.stderr
    _assert_whole(calls(everything=True), work, tmp_path / "stub venv")


def test_stage_6_hands_existing_shar_shards_to_asr_shar(stub, tmp_path):
    """Shards written by an earlier run were kept whatever the cuts had become; `asr shar` now
    decides (it keeps them while its fingerprint says they hold these cuts)."""
    run, calls = stub
    work = tmp_path / "work"
    shar = work / "data" / "shar" / "train-clean-100"
    shar.mkdir(parents=True)
    (shar / "cuts.000000.jsonl.gz").write_bytes(b"")
    result = run(RUN, "--work-dir", str(work), "--full-libri", "false", "--stage", "6",
                 "--stop-stage", "6", "--use-shar", "true")
    assert result.returncode == 0, result.stderr
    (check_call, shar_call, train_call) = calls()
    assert check_call[0] == "train" and "--check-only" in check_call
    assert shar_call[0] == "shar" and train_call[0] == "train"
    assert shar_call[shar_call.index("--output-dir") + 1] == "data/shar/train-clean-100"
    assert "data.train_shar_dirs=[data/shar/train-clean-100]" in train_call


def test_mini_tts_stage_8_fails_when_scoring_fails(stub, tmp_path):
    run, calls = stub
    bias_dir = tmp_path / "work" / "data" / "LibriSpeech" / "biasing"
    bias_dir.mkdir(parents=True)
    for name in ("dev-biasing.hotwords.txt", "test-biasing.hotwords.txt", "distractors.txt"):
        (bias_dir / name).write_text("PHRASE\n")
    _mini_tts_stage_3_outputs(tmp_path / "work")  # the LM that stage 8's beam search fuses
    result = run(MINI_TTS, "--work-dir", str(tmp_path / "work"), "--stage", "8",
                 "--biasing", "2", fail="wer")
    assert result.returncode == 2, result.stderr
    assert "done (stages" not in result.stderr
    assert [c[0] for c in calls()][-2:] == ["decode", "wer"]


def test_stage_0_downloads_exactly_the_missing_and_unfinished_parts(stub, tmp_path):
    """`lhotse download librispeech` has no --full-libri (stage 0 failed at once) and fetches all
    960 h even for --full-libri false; a part whose lhotse extraction was killed was trusted."""
    run, calls = stub
    dl_dir = tmp_path / "dl dir"
    for part in ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100"):
        (dl_dir / "LibriSpeech" / part).mkdir(parents=True)
    (dl_dir / "dev-clean.tar.gz").write_bytes(b"")  # lhotse's archive ...
    (dl_dir / "LibriSpeech" / "dev-clean" / ".completed").write_text("")  # ... and its marker
    (dl_dir / "test-other.tar.gz").write_bytes(b"")  # extracted without the marker: unfinished
    common = ["--work-dir", str(tmp_path / "work"), "--dl-dir", str(dl_dir), "--stop-stage", "0"]
    result = run(PREPARE, *common)
    assert result.returncode == 0, result.stderr
    (download,) = calls(everything=True)
    assert download[0] == "python" and "download_librispeech" in download[2]
    assert download[3:] == [str(dl_dir), "test-other", "train-clean-360", "train-other-500"]
    run(PREPARE, *common, "--full-libri", "false")
    assert calls(everything=True)[-1][3:] == [str(dl_dir), "test-other"]
    (dl_dir / "LibriSpeech" / "test-other" / ".completed").write_text("")
    skipped = run(PREPARE, *common, "--full-libri", "false")
    assert "holds every part; no download" in skipped.stderr and len(calls(everything=True)) == 2


@pytest.mark.parametrize("script, stage", [(RUN, "10"), (MINI_TTS, "7")])
def test_the_onnx_stage_exports_the_layouts_the_model_has(stub, tmp_path, script, stage):
    """A streaming TDT, CTC or CIF model has an offline sherpa-onnx layout only: the export stage
    of its recipe ended in an error after everything else."""
    run, calls = stub
    exp = tmp_path / "work" / "exp" / ("conformer_transducer" if script == RUN
                                       else "transformer_transducer")
    (exp / "package").mkdir(parents=True)
    (exp / "package" / "metadata.json").write_text('{"streaming": true}')
    for no_streaming, dirs in ((True, ["onnx"]), (False, ["onnx", "onnx-streaming"])):
        before = len(calls())
        result = run(script, "--work-dir", str(tmp_path / "work"), "--stage", stage,
                     "--stop-stage", stage, no_streaming=no_streaming)
        assert result.returncode == 0, result.stderr
        made = calls()[before:]
        assert [c[0] for c in made] == ["export-onnx"] * 2 + ["decode-onnx"] * 2 * len(dirs)
        assert all("--if-supported" in c for c in made[:2])
        decoded = [Path(c[c.index("--onnx-dir") + 1]).name for c in made[2:]]
        assert decoded == [d for d in dirs for _ in range(2)]
    failed = run(script, "--work-dir", str(tmp_path / "work"), "--stage", stage, "--stop-stage",
                 stage, fail="export-onnx")  # a failed export (mini_tts: inside `timed`) stops it
    assert failed.returncode == 2 and "done (stages" not in failed.stderr
    assert calls()[-1][0] == "export-onnx"


@pytest.mark.parametrize("script, stage", [(RUN, "10"), (MINI_TTS, "7")])
def test_the_onnx_stage_reads_the_streaming_field_of_the_metadata(stub, tmp_path, script,
                                                                     stage):
    """`grep '"streaming": true'` read a missing, unreadable or invalid metadata.json (and one
    written without that spacing) as "not streaming": the streaming export was left out
    without a word."""
    run, calls = stub
    exp = tmp_path / "work" / "exp" / ("conformer_transducer" if script == RUN
                                       else "transformer_transducer")
    (exp / "package").mkdir(parents=True)
    metadata = exp / "package" / "metadata.json"
    for text, modes in (('{"streaming":true}', 2), ('{\n  "streaming": false}', 1), ("{}", 1)):
        metadata.write_text(text)
        before = len(calls())
        result = run(script, "--work-dir", str(tmp_path / "work"), "--stage", stage,
                     "--stop-stage", stage)
        assert result.returncode == 0, result.stderr
        exports = [c for c in calls()[before:] if c[0] == "export-onnx"]
        assert len(exports) == modes and ("--streaming" in exports[-1]) == (modes == 2), text
    unread, no_field = ("cannot read the package metadata",
                        'the package metadata has no boolean "streaming" field')
    for text, message in ((None, unread), ('{"streaming": true', unread), ("[]", no_field),
                          ('{"streaming": "true"}', no_field)):
        if text is None:
            metadata.unlink()
        else:
            metadata.write_text(text)
        before = len(calls())
        result = run(script, "--work-dir", str(tmp_path / "work"), "--stage", stage,
                     "--stop-stage", stage)
        assert result.returncode == 2, (text, result.stderr)
        assert f"{metadata}: {message}" in result.stderr, result.stderr
        assert calls()[before:] == [] and "done (stages" not in result.stderr


def test_stage_4_makes_musan_fbank_again_only_when_it_is_stale(stub, tmp_path):
    """The MUSAN fbank manifest was kept whenever it existed: one left by a killed extraction
    (lhotse writes it as it goes) or made from older recordings was reused for good."""
    run, calls = stub
    work = tmp_path / "work"
    recordings = work / "data" / "manifests" / "musan_recordings_noise.jsonl.gz"
    recordings.parent.mkdir(parents=True)
    recordings.write_bytes(b"")
    cuts = work / "data" / "fbank" / "musan_cuts.jsonl.gz"

    def stage_4() -> list[list[str]]:
        before = len(calls(everything=True))
        result = run(PREPARE, "--work-dir", str(work), "--stage", "4", "--stop-stage", "4")
        assert result.returncode == 0, result.stderr
        return [c[1:3] for c in calls(everything=True)[before:] if c[0] == "lhotse"]

    made = [["cut", "simple"], ["feat", "extract-cuts"]]
    assert stage_4() == made and cuts.is_file()
    assert not (cuts.parent / "musan_cuts.partial.jsonl.gz").exists()
    assert stage_4() == []  # current: kept
    os.utime(recordings, (cuts.stat().st_mtime + 10,) * 2)
    assert stage_4() == made  # the recordings are newer
    cuts.unlink()
    (cuts.parent / "musan_cuts.partial.jsonl.gz").write_bytes(b"")  # a killed extraction
    assert stage_4() == made and cuts.is_file()


def _documented_runs(readme: str) -> list[tuple[list[str], list[list[str]]]]:
    """(script argv, the commands the README says it runs) for each ``bash run.sh|prepare.sh``
    line of the README's shell blocks followed by (or ending in) ``#   asr ...`` /
    ``#   torchrun ...`` comments; ``\\`` continuations joined."""
    runs: list[tuple[list[str], list[list[str]]]] = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in re.sub(r"\\\n\s*#?\s*", " ", block).splitlines():
            code, _, comment = line.partition("  # ")
            if code.startswith("bash "):
                runs.append((shlex.split(code)[1:], []))
                line = "#   " + comment
            command = re.match(r"#\s+((?:asr|torchrun)\b.*)", line.strip())
            if command and runs:
                runs[-1][1].append(shlex.split(command.group(1)))
    return [run for run in runs if run[1]]


def _matches(documented: list[str], actual: list[str]) -> bool:
    """Whether a documented command is a call: ``...`` stands for any arguments, and a path may
    be written relative to the repository (``recipes/...``, where the script passes it whole)."""
    if not documented:
        return not actual
    if documented[0] == "...":
        return any(_matches(documented[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and (
        actual[0] == documented[0] or actual[0].endswith("/" + documented[0])
    ) and _matches(documented[1:], actual[1:])


def test_the_librispeech_readme_shows_the_commands_its_stages_run(stub, tmp_path):
    """Each command recipes/librispeech/README.md says a stage runs is one the stage runs, in
    order (the stage 6 comment had lost the shuffled training manifest it trains on)."""
    run, calls = stub
    readme = (REPO / "recipes" / "librispeech" / "README.md").read_text(encoding="utf-8")
    runs = _documented_runs(readme)
    assert len(runs) >= 6, runs
    for i, ((script, *args), documented) in enumerate(runs):
        work = tmp_path / f"work{i}"
        for command in documented:  # what the earlier stages would have made
            for option, value in zip(command, command[1:]):
                made_path = None
                if option == "--output" and value.endswith(".safetensors"):  # stage 8's weights
                    made_path = value
                elif value.startswith("search.lm_path="):  # stage 5's LM
                    made_path = value.removeprefix("search.lm_path=")
                if made_path is not None:
                    (work / made_path).parent.mkdir(parents=True, exist_ok=True)
                    (work / made_path).write_bytes(b"")
        before = len(calls(everything=True))
        result = run(LIBRI / script, "--work-dir", str(work), *args)
        assert result.returncode == 0, result.stderr
        made = iter(calls(everything=True)[before:])
        for command in documented:
            assert any(_matches(command, call) for call in made), (
                f"bash {script} {shlex.join(args)} runs no `{shlex.join(command)}`: "
                f"{calls(everything=True)[before:]}")


def test_run_sh_hands_lm_text_to_prepare_sh(stub, tmp_path):
    """run.sh forwards every prepare.sh option but --lm-text: `bash run.sh --lm-text F` was
    refused, so the LMs of another text needed prepare.sh run on its own."""
    run, calls = stub
    texts = _lm_texts(tmp_path / "work")
    result = run(RUN, "--work-dir", str(tmp_path / "work"), "--full-libri", "false", "--stage",
                 "5", "--stop-stage", "5", "--lm-text", texts[0], "--lm-text", texts[1])
    assert result.returncode == 0, result.stderr
    check, bpe, token_lm, word_lm = calls()
    assert check[:2] == ["bpe", "--check-only"] and bpe[0] == "bpe"
    for lm in (token_lm, word_lm):
        start = lm.index("--transcripts") + 1
        assert lm[start:start + 2] == texts
    assert "--lm-text" in run(RUN, "--help").stderr


def test_a_rerun_of_stages_2_to_4_keeps_the_musan_fbank(stub, tmp_path):
    """`lhotse prepare musan` rewrites its manifests on every run, so stage 4 found the recordings
    newer than the MUSAN fbank and computed it again on each rerun of prepare.sh (or run.sh from
    stage 0); a manifest whose content changed must still make it again."""
    run, calls = stub
    work, dl_dir = tmp_path / "work", tmp_path / "dl dir"
    (dl_dir / "musan").mkdir(parents=True)
    manifests = work / "data" / "manifests"

    def stages_2_to_4(**env: str) -> list[list[str]]:
        before = len(calls(everything=True))
        result = run(PREPARE, "--work-dir", str(work), "--dl-dir", str(dl_dir), "--stage", "2",
                     "--stop-stage", "4", env=env)
        assert result.returncode == 0, result.stderr
        return [c[1:3] for c in calls(everything=True)[before:] if c[0] == "lhotse"]

    made = [["prepare", "musan"], ["cut", "simple"], ["feat", "extract-cuts"]]
    assert stages_2_to_4() == made
    assert stages_2_to_4() == [["prepare", "musan"]]  # the same recordings: fbank kept
    assert sorted(p.name for p in manifests.iterdir()) == [
        "musan_recordings_music.jsonl.gz", "musan_recordings_noise.jsonl.gz",
        "musan_supervisions_music.jsonl.gz"]  # no scratch directory left
    assert stages_2_to_4(STUB_MUSAN="more noise") == made  # other recordings: made again


def test_mini_tts_stage_6_records_only_a_wer_measured_with_the_package_search(stub, tmp_path):
    """Stage 6 took the WER that stage 5 measured with the package searcher, whatever search
    options stage 5 had used: after `--stage 5 --stop-stage 5 --lm-weight 0.4`, a stage 6 with the
    default 0.55 recorded 0.4's WER in a package that searches with 0.55."""
    run, calls = stub
    work = tmp_path / "work"
    trans = work / "data" / "LibriSpeech" / "test-clean" / "1" / "2" / "1-2.trans.txt"
    trans.parent.mkdir(parents=True)
    trans.write_text("1-2-0000 HELLO\n")
    (work / "exp" / "transformer_transducer").mkdir(parents=True)  # what the stub average skips
    _mini_tts_stage_3_outputs(work)  # the LM the beam search fuses
    common = ["--work-dir", str(work), "--searchers", "greedy beam"]

    def exported(*args: str) -> list[str]:
        result = run(MINI_TTS, *common, "--stage", "6", "--stop-stage", "6", *args)
        assert result.returncode == 0, result.stderr
        (call,) = [c for c in calls() if c[0] == "export-package"][-1:]
        return call

    assert run(MINI_TTS, *common, "--stage", "5", "--stop-stage", "5",
               "--lm-weight", "0.4").returncode == 0
    assert "--wer" not in exported()  # measured with 0.4, exported with 0.55
    call = exported("--lm-weight", "0.4")
    assert call[call.index("--wer") + 1] == "test-clean=1.00" and "search.lm_weight=0.4" in call
    call = exported("--package-searcher", "greedy", "--lm-weight", "0.7")  # greedy: no LM
    assert call[call.index("--wer") + 1] == "test-clean=1.00"


def _fake_musan(path: Path) -> dict[str, bytes]:
    """A tiny musan.tar.gz at ``path``; returns its files (path under the archive -> bytes)."""
    files = {f"musan/noise/free-sound/noise-{i:04d}.wav": bytes([i]) * 1000 for i in range(3)}
    files["musan/README"] = b"MUSAN\n"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return files


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_killed_musan_extraction_is_refused_until_it_is_redone(stub, tmp_path):
    """lhotse extracts MUSAN in place and writes $dl_dir/.musan_completed after it; a half
    extracted musan/ was checked only with --download-musan true and otherwise prepared as if
    whole (stage 2), on every later run."""
    run, calls = stub
    work, dl_dir = tmp_path / "work", tmp_path / "dl dir"
    (dl_dir / "musan" / "noise").mkdir(parents=True)  # what the killed extraction got to
    (dl_dir / "musan.tar.gz").write_bytes(b"")
    common = ["--work-dir", str(work), "--dl-dir", str(dl_dir)]
    for args in (["--stage", "2"], ["--stage", "1", "--stop-stage", "4"],
                 ["--stage", "2", "--download-musan", "true"]):  # stage 0 would extract it again
        result = run(PREPARE, *common, *args)
        assert result.returncode == 2, result.stderr
        assert f"{dl_dir}/musan is an unfinished extraction" in result.stderr
        assert calls(everything=True) == []
    assert run(PREPARE, *common, "--stage", "3", "--stop-stage", "4").returncode == 0  # no MUSAN
    (dl_dir / ".musan_completed").write_text("")
    result = run(PREPARE, *common, "--stage", "2", "--stop-stage", "2")
    assert result.returncode == 0, result.stderr
    assert calls(everything=True)[-1][:3] == ["lhotse", "prepare", "musan"]


def test_stage_0_extracts_musan_whole_or_not_at_all(stub, tmp_path):
    """The real stage 0 (lhotse's download helper, this Python) on a tiny fake archive: a half
    extraction is redone from the archive already there, without a download; without an archive
    it is fetched from --musan-url first. The extraction is renamed into place when whole and
    the marker written last."""
    run, _ = stub
    dl_dir = tmp_path / "dl dir"
    for part in ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100"):
        (dl_dir / "LibriSpeech" / part).mkdir(parents=True)
    files = _fake_musan(dl_dir / "musan.tar.gz")
    (dl_dir / "musan" / "noise").mkdir(parents=True)  # a killed extraction: a file cut short
    (dl_dir / "musan" / "noise" / "x.wav").write_bytes(b"RIFF")
    args = ["--work-dir", str(tmp_path / "work"), "--dl-dir", str(dl_dir), "--full-libri",
            "false", "--stop-stage", "0", "--download-musan", "true", "--musan-url",
            "http://0.0.0.0:9/unreachable/musan.tar.gz"]
    result = run(PREPARE, *args, env={"ASR_VENV": sys.prefix})
    assert result.returncode == 0, result.stderr
    assert _tree(dl_dir / "musan") == {k.removeprefix("musan/"): v for k, v in files.items()}
    assert (dl_dir / ".musan_completed").is_file() and not (dl_dir / ".musan.partial").exists()
    again = run(PREPARE, *args, env={"ASR_VENV": sys.prefix})  # complete: nothing to do
    assert again.returncode == 0 and "download MUSAN" not in again.stderr
    # no archive here: downloaded from --musan-url
    source = tmp_path / "mirror" / "musan.tar.gz"
    source.parent.mkdir()
    (dl_dir / "musan.tar.gz").rename(source)
    shutil.rmtree(dl_dir / "musan")
    (dl_dir / ".musan_completed").unlink()
    args[-1] = source.as_uri()
    result = run(PREPARE, *args, env={"ASR_VENV": sys.prefix})
    assert result.returncode == 0, result.stderr
    assert (dl_dir / "musan.tar.gz").read_bytes() == source.read_bytes()
    assert _tree(dl_dir / "musan") == {k.removeprefix("musan/"): v for k, v in files.items()}


def test_run_sh_passes_the_musan_mirror_to_prepare_sh(stub, tmp_path):
    """run.sh --download-musan true had no --musan-url (an unknown option): a run.sh user could
    not name a mirror."""
    run, calls = stub
    dl_dir = tmp_path / "dl dir"
    for part in ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100"):
        (dl_dir / "LibriSpeech" / part).mkdir(parents=True)
    mirror = "https://us.openslr.org/resources/17/musan.tar.gz"
    result = run(RUN, "--work-dir", str(tmp_path / "work"), "--dl-dir", str(dl_dir),
                 "--full-libri", "false", "--stop-stage", "0", "--download-musan", "true",
                 "--musan-url", mirror)
    assert result.returncode == 0, result.stderr
    (download,) = [c for c in calls(everything=True) if c[0] == "python"]
    assert download[1:] == ["-", str(dl_dir), mirror]


def test_mini_tts_stage_5_averages_the_checkpoints_a_short_run_left(stub, tmp_path):
    """The time budget decides how many checkpoints training leaves: on a busy machine a run
    left one, and `asr average --last 2` failed the job at stage 5. Fewer than --avg are all
    averaged; none is left to asr average to name."""
    run, calls = stub
    work = tmp_path / "work"
    exp = work / "exp" / "transformer_transducer"
    exp.mkdir(parents=True)

    def last(*args: str) -> str:
        result = run(MINI_TTS, "--work-dir", str(work), "--searchers", "greedy", "--stage", "5",
                     "--stop-stage", "5", *args)
        assert result.returncode == 0, result.stderr
        (call,) = [c for c in calls() if c[0] == "average"][-1:]
        return call[call.index("--last") + 1]

    assert last() == "2"  # none: asked as it is
    (exp / "checkpoint-350.pt").write_bytes(b"")
    assert last() == "1"
    for step in (700, 1050):
        (exp / f"checkpoint-{step}.pt").write_bytes(b"")
    assert last() == "2" and last("--avg", "3") == "3" and last("--avg", "4") == "3"


@pytest.mark.parametrize("decode_args, message", [
    ("--beam-size 8", "unrecognized arguments: --beam-size 8"),
    ("--set search.beam_size=0", "search.beam_size must be >= 1, got 0"),
    ("--parts test-clena", "argument --parts: test-clena: not among the test sets the recipe "
                           "prepares in data/fbank (dev-clean, dev-other, test-clean, test-other)"),
])
def test_decode_args_are_checked_before_the_first_stage(stub, real, tmp_path, decode_args, message):
    """A misspelt `asr decode` option or a bad value in --decode-args was found by stage 7, after
    the data preparation and training: asr decode's own parser and config check it now.

    The recipe hands every --decode-args word to `asr train --check-only` alike: one case of
    asr decode's parser, one of its search config, and the test sets the recipe prepares (its
    own list) show that; what else the check refuses (a device, --num-threads, --epoch, a search
    key) is tests/cli/test_train.py's, in-process."""
    run, _ = stub
    dl_dir = tmp_path / "dl"
    for part in ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100"):
        (dl_dir / "LibriSpeech" / part).mkdir(parents=True)
    result = run(RUN, "--work-dir", str(tmp_path / "work"), "--dl-dir", str(dl_dir),
                 "--full-libri", "false", "--decode-args", decode_args, env=real)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "--decode-args (above); nothing was run" in result.stderr
    assert "stage 0" not in result.stderr and not (tmp_path / "work" / "data").exists()


def test_an_epoch_that_training_does_not_reach_is_refused_before_the_first_stage(stub, real,
                                                                                 tmp_path):
    """Fewer epochs in --train-args with the default --epoch 30: stage 7 failed on a missing
    epoch-30.pt after the whole preparation and training."""
    run, calls = stub
    work = tmp_path / "work"
    result = run(RUN, "--work-dir", str(work), "--train-args", "--set train.max_epochs=10",
                 env=real)
    assert result.returncode == 2, result.stderr
    assert "argument --epoch: 30 is past train.max_epochs 10: training writes no epoch-30.pt" \
        in result.stderr and "nothing was run" in result.stderr
    assert "stage 0" not in result.stderr and not (work / "data").exists()


def _prepared_test_sets(work: Path) -> None:
    """The (empty) test set manifests prepare.sh stage 3 leaves in ``work``, and the tokenizer
    of its stage 5 (with the default --vocab-size), which training loads."""
    (work / "data" / "fbank").mkdir(parents=True)
    for part in ("dev-clean", "dev-other", "test-clean", "test-other"):
        (work / "data" / "fbank" / f"librispeech_cuts_{part}.jsonl.gz").write_bytes(b"")
    (work / "data" / "lang_bpe_500").mkdir(parents=True)
    (work / "data" / "lang_bpe_500" / "bpe.model").write_bytes(b"")


@pytest.mark.parametrize("decode_args, message", [
    ("--manifest-dir 'no sets'", "argument --manifest-dir: no directory no sets"),
    ("--manifest-dir 'my sets' --parts mine", None),
])
def test_decode_test_sets_are_checked_when_the_run_starts_on_prepared_data(stub, real, tmp_path,
                                                                           decode_args, message):
    """--parts / --manifest-dir of --decode-args (and an LM) were checked by stage 7 only, after
    training: from stage 6 on the data is prepared, so their files must be there now.

    From stage 6 on the recipe has the check look for the files (--decode-data-ready), whatever
    the decode line names: a missing --manifest-dir and a user's own that holds the part show
    it; a missing part's manifest is tests/cli/test_train.py's (in-process), a missing LM of
    --decode-args' own test_a_missing_lm_of_lm_unit_is_named_with_the_stage_that_makes_it's."""
    run, calls = stub
    work = tmp_path / "work"
    _prepared_test_sets(work)
    (work / "my sets").mkdir()
    (work / "my sets" / "librispeech_cuts_mine.jsonl.gz").write_bytes(b"")
    result = run(RUN, "--work-dir", str(work), "--stage", "6", "--stop-stage", "7",
                 "--decode-args", decode_args, env=real)
    if message is None:
        assert "nothing was run" not in result.stderr and "stage 6: train" in result.stderr
        return
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "--decode-args (above); nothing was run" in result.stderr
    assert "stage 6" not in result.stderr and calls() == []


@pytest.mark.parametrize("lm_unit, lm, options", [
    ("token", "token_4gram.arpa", "--vocab-size 500 --lm-order 4"),
    ("word", "word_3gram.arpa", "--vocab-size 500 --word-lm-order 3"),
])
def test_a_missing_lm_of_lm_unit_is_named_with_the_stage_that_makes_it(stub, real, tmp_path,
                                                                      lm_unit, lm, options):
    """--stage 6 --lm-unit token|word without the LM was refused without a word on which stage
    makes it; an LM path of --decode-args' own is named as it is."""
    run, calls = stub
    work = tmp_path / "work"
    _prepared_test_sets(work)
    result = run(RUN, "--work-dir", str(work), "--stage", "6", "--lm-unit", lm_unit, env=real)
    assert result.returncode == 2, result.stderr
    assert f"search.lm_path data/lang_bpe_500/{lm}: no such LM file (in {work}), which stage 5 " \
           f"(prepare.sh's LMs, with {options}) makes; this run starts after it" in result.stderr
    assert "in the working directory" not in result.stderr  # the stage's hint alone
    assert "nothing was run" in result.stderr and calls() == []
    own = run(RUN, "--work-dir", str(work), "--stage", "6", "--lm-unit", lm_unit,
              "--decode-args", "--set search.lm_path=mine.arpa", env=real)
    assert own.returncode == 2, own.stderr
    assert f"search.lm_path mine.arpa: no such LM file in the working directory {work} (a " \
           "relative path in search.lm_path: run from the directory the config's paths are " \
           "relative to (a recipe's --work-dir), or give an absolute path)\n" in own.stderr
    assert "stage 5" not in own.stderr


@pytest.mark.parametrize("lm_unit, lm, options", [
    ("token", "token_4gram.arpa", "--vocab-size 500 --lm-order 4"),
    ("word", "word_3gram.arpa", "--vocab-size 500 --word-lm-order 3"),
])
def test_a_run_from_stage_7_names_the_stage_that_makes_its_missing_lm(stub, tmp_path, lm_unit,
                                                                     lm, options):
    """--stage 7 --lm-unit token|word without the LM failed inside `asr decode`, without a word
    on which stage makes it; now it is refused before anything runs. An LM path of
    --decode-args' own is asr decode's to check."""
    run, calls = stub
    work = tmp_path / "work"
    _prepared_test_sets(work)
    result = run(RUN, "--work-dir", str(work), "--stage", "7", "--lm-unit", lm_unit)
    assert result.returncode == 2, result.stderr
    assert f"no data/lang_bpe_500/{lm} (in {work}), which stage 5 (prepare.sh's LMs, with " \
           f"{options}) makes: --stage 7 starts after it" in result.stderr
    assert "nothing was run" in result.stderr and calls(everything=True) == []
    own = run(RUN, "--work-dir", str(work), "--stage", "7", "--stop-stage", "7",
              "--lm-unit", lm_unit, "--decode-args", "--set search.lm_path=mine.arpa")
    assert own.returncode == 0, own.stderr
    assert calls()[0][:1] == ["decode"] and "search.lm_path=mine.arpa" in calls()[0]
    (work / "data" / "lang_bpe_500" / lm).write_text("")
    made = run(RUN, "--work-dir", str(work), "--stage", "7", "--stop-stage", "7",
               "--lm-unit", lm_unit)
    assert made.returncode == 0, made.stderr


def test_decode_args_that_fit_pass_the_check(stub, real, tmp_path):
    run, _ = stub
    _prepared_test_sets(tmp_path / "work")
    result = run(RUN, "--work-dir", str(tmp_path / "work"), "--stage", "6", "--stop-stage", "7",
                 "--decode-args", "--set search.beam_size=8 --num-threads 2 --device cpu",
                 env=real)
    assert "nothing was run" not in result.stderr and "stage 6: train" in result.stderr


def test_train_and_decode_args_keep_a_quoted_value_with_spaces_whole(stub, tmp_path):
    """--train-args / --decode-args were split at every space ($train_args): a value with a
    space (a path, a YAML mapping) could not be given. They are split as the shell splits words,
    so quotes keep a value whole, and the documented unquoted use stays as it was."""
    run, calls = stub
    work = str(tmp_path / "work")
    train_args = "--set 'data.train_cuts=[my data/a.jsonl.gz]' train.max_epochs=2"
    decode_args = "--set \"search.lm_path=my lms/x.arpa\" search.beam_size=8"
    result = run(RUN, "--work-dir", work, "--stage", "6", "--stop-stage", "7",
                 "--train-args", train_args, "--decode-args", decode_args)
    assert result.returncode == 0, result.stderr
    check, train, decode = calls()  # (the stub python: no streaming model, no full context)
    for call in (check, train):
        assert call[-3:] == ["--set", "data.train_cuts=[my data/a.jsonl.gz]", "train.max_epochs=2"]
    assert decode[-3:] == ["--set", "search.lm_path=my lms/x.arpa", "search.beam_size=8"]
    assert "--decode-arg=search.lm_path=my lms/x.arpa" in check  # and checked as decoded
    (tmp_path / "work" / "exp" / "transformer_transducer").mkdir(parents=True)
    result = run(MINI_TTS, "--work-dir", work, "--stage", "4", "--stop-stage", "4",
                 "--time-budget", "0", "--train-args", "--set 'heads.loss_weights={ctc: 1.0}'")
    assert result.returncode == 0, result.stderr
    assert [c[-1] for c in calls()[-2:]] == ["heads.loss_weights={ctc: 1.0}"] * 2


@pytest.mark.parametrize("value, message", [
    ("--set 'a=b c", "--train-args: unclosed ' quote in: --set 'a=b c"),
    ('--set "a=b', "--train-args: unclosed \" quote in: --set \"a=b"),
    ("--set \"a=b\\\"", "--train-args: unclosed \" quote in: --set \"a=b\\\""),
])
def test_a_train_args_value_with_an_open_quote_is_refused(stub, tmp_path, value, message):
    run, calls = stub
    for script in (RUN, MINI_TTS):
        result = run(script, "--work-dir", str(tmp_path / "work"), "--train-args", value)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert calls(everything=True) == []


@pytest.mark.parametrize("text", [
    "--set train.max_epochs=2", "--set a=1 b=2", "", "   ", "''", "a''b \"\" c",
    "--set 'a=b c' \"d=e\\\"f\" g\\ h", "x\"y z\"w", "--set \"a=\\$HOME\" 'b=$x' c=*", "a\\\\b",
    "\t--set\ta=1  b=\"2 3\"\t", "'it'\\''s'", "\"a\\b\" 'c\\d'",
    # empty quoted words, alone and beside others
    "'' \"\"", "a \"\" ''b \"\"'' ''", "\"\"''",
    # a comment starts only at the start of a word, and ends at its line
    "--set a=1 # b=2", "a#b #c d", "#x", "a '#b' \"#c\" \\#d e#", "a #c\nb", "a\n#c\n  d",
    # backslashes: before a newline they join lines (but in '...'), at the very end one stays
    "a\\\nb", "\"c\\\nd\" 'e\\\nf'", "a \\\n#c\nd", "a\\", "'a'\\", "\\ a",
    "\"\\a\\$\\`\\\\\"",
    # only blanks and newlines separate words: carriage returns and other spaces do not
    "a\rb\vc\fd --set k=v\r", "a\n\nb\n",
])
def test_option_words_splits_as_the_shell_does(text):
    """option_words against bash's own word splitting (eval of the text in an array assignment,
    where newlines separate words as blanks do; safe here: no expansion the texts trigger).
    Comments, backslash-newlines, a backslash at the end and carriage returns were split
    otherwise."""
    script = f"""
train_args=$1
set --  # no option for parse_options.sh to parse
. "{REPO}/egs/shared/parse_options.sh"
option_words train_args words
printf '%s\\0' "${{#words[@]}}" "${{words[@]}}"
if [[ "$train_args" == *$'\\n'* ]]; then
  eval "bash_words=( $train_args"$'\\n'")"
else
  eval "set -- $train_args"  # a backslash at the very end stays (it escapes no newline)
  bash_words=("$@")
fi
printf '%s\\0' "${{#bash_words[@]}}" "${{bash_words[@]}}"
"""
    out = subprocess.run(["bash", "-c", script, "bash", text], capture_output=True, text=True,
                         check=True).stdout.split("\0")[:-1]
    count = int(out[0])
    assert out[1:count + 1] == out[count + 2:] and int(out[count + 1]) == count, out


def test_mini_tts_refuses_biasing_with_a_beam_search_that_takes_no_hotwords(stub, real, tmp_path):
    """--biasing N decodes stage 8 with the beam search and hotwords: a recipe whose beam search
    takes none (here aed_beam: a CTC/AED recipe without its CTC head) was checked only for having
    a beam search, and stage 8 compared two identical decodes after training."""
    run, _ = stub
    _mini_tts_stage_3_outputs(tmp_path / "work")
    aed_only = ["--work-dir", str(tmp_path / "work"), "--recipe", "conformer_ctc_aed",
                "--searchers", "aed_beam", "--package-searcher", "aed_beam", "--stage", "4",
                "--time-budget", "100",
                "--train-args", "--set heads.ctc=null 'heads.loss_weights={aed: 1.0}'"]
    result = run(MINI_TTS, *aed_only, "--biasing", "2", env=real)
    assert result.returncode == 2, result.stderr
    assert "--biasing-searchers: searcher 'aed_beam' takes no hotwords" in result.stderr
    assert "nothing was run" in result.stderr
    result = run(MINI_TTS, *aed_only, env=real)  # no stage 8: the check passes
    assert result.returncode == 1 and "time budget left for training" in result.stderr
    result = run(MINI_TTS, "--work-dir", str(tmp_path / "work"), "--stage", "4",
                 "--time-budget", "100", "--biasing", "2", env=real)  # the default recipe biases
    assert result.returncode == 1 and "time budget left for training" in result.stderr


@pytest.mark.parametrize("script, stage, made_by", [
    (MINI_TTS, "4", "stage 3 (BPE, --vocab-size 256)"),
    (RUN, "6", "stage 5 (BPE, --vocab-size 256)"),
])
def test_a_run_from_training_on_needs_the_tokenizer_of_its_vocab_size(stub, real, tmp_path, script,
                                                                      stage, made_by):
    """Starting at the training stage with a --vocab-size whose BPE stage never ran went into
    training (for LibriSpeech after writing the Shar shards of 960 h) and failed there; now the
    check before the first stage names the missing file and the stage that makes it. A
    tokenizer_dir of --train-args is the one checked."""
    run, calls = stub
    work = tmp_path / "work"
    _prepared_test_sets(work)  # LibriSpeech's test sets, and lang_bpe_500
    _mini_tts_stage_3_outputs(work)  # mini_tts's lang_bpe_128
    common = ["--work-dir", str(work), "--stage", stage, "--vocab-size", "256",
              *(["--stop-stage", "4", "--time-budget", "100"] if script is MINI_TTS
                else ["--use-shar", "true"])]
    result = run(script, *common, env=real)
    assert result.returncode == 2, result.stderr
    assert "tokenizer_dir: data/lang_bpe_256: no tokenizer found (expected " \
        f"data/lang_bpe_256/bpe.model or tokens.txt); {made_by} makes it" in result.stderr
    assert "nothing was run" in result.stderr and f"stage {stage}:" not in result.stderr
    assert calls(everything=True) == [] and not (work / "exp").exists()
    # a character tokenizer of one's own, through --train-args: taken
    (work / "chars").mkdir()
    (work / "chars" / "tokens.txt").write_text("")
    own = run(script, *common, "--train-args", "--set tokenizer_dir=chars", env=real)
    assert "nothing was run" not in own.stderr, own.stderr
    # the tokenizer of this --vocab-size there: the run goes on to training
    (work / "data" / "lang_bpe_256").mkdir()
    (work / "data" / "lang_bpe_256" / "bpe.model").write_bytes(b"")
    result = run(script, *common, env=real)
    assert "nothing was run" not in result.stderr, result.stderr
    if script is MINI_TTS:
        assert result.returncode == 1 and "time budget left for training" in result.stderr
    else:
        assert "stage 6: train" in result.stderr


@pytest.mark.parametrize("args, lm", [
    (["--stage", "5", "--lm-order", "5"], "data/lang_bpe_128/token_5gram.arpa"),
    (["--stage", "4", "--vocab-size", "64"], "data/lang_bpe_64/token_6gram.arpa"),
    (["--stage", "5", "--lm-unit", "word"], "data/lang_bpe_128/word_3gram.arpa"),
    (["--stage", "6", "--searchers", "greedy"], "data/lang_bpe_128/token_6gram.arpa"),
    (["--stage", "8", "--biasing", "2", "--package-searcher", "greedy"],
     "data/lang_bpe_128/token_6gram.arpa"),
    (["--stage", "5", "--searchers", "greedy", "--package-searcher", "greedy"], None),
    (["--stage", "7", "--lm-order", "5"], None),
])
def test_mini_tts_from_stage_4_on_needs_the_lm_its_searches_fuse(stub, tmp_path, args, lm):
    """A run after stage 3 whose beam searches fuse an LM stage 3 never made (another order,
    unit or --vocab-size) trained for half an hour and failed at the decode; greedy searchers
    and the stages after 6 fuse none."""
    run, calls = stub
    work = tmp_path / "work"
    (work / "data" / "lang_bpe_128").mkdir(parents=True)
    (work / "data" / "lang_bpe_128" / "bpe.model").write_bytes(b"")  # but no LM
    (work / "exp" / "transformer_transducer" / "package").mkdir(parents=True)
    (work / "exp" / "transformer_transducer" / "package" / "metadata.json").write_text("{}")
    _transcripts(work / "data" / "LibriSpeech" / "test-clean", "HELLO")  # stage 6's file
    result = run(MINI_TTS, "--work-dir", str(work), "--time-budget", "0", *args)
    if lm is None:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2, result.stderr
    assert f"no {lm} (in {work}), which stage 3 (the LMs, " in result.stderr
    assert f"--stage {args[1]} starts after it" in result.stderr
    assert calls(everything=True) == [] and "nothing was run" in result.stderr


def test_mini_tts_stage_5_without_training_lets_asr_average_say_so(stub, tmp_path):
    """No exp/<recipe>: the checkpoint count (find in a pipeline, under pipefail) ended the
    script with status 1 and no word before asr average could name the problem."""
    run, calls = stub
    result = run(MINI_TTS, "--work-dir", str(tmp_path / "work"), "--stage", "5",
                 "--stop-stage", "5", "--searchers", "greedy", fail="average")
    assert result.returncode == 2, result.stderr
    assert [c[0] for c in calls()] == ["average"], result.stderr
    assert "stage 'average' failed" in result.stderr


def _transcripts(part: Path, text: str) -> None:
    part.joinpath("1", "2").mkdir(parents=True)
    part.joinpath("1", "2", "1-2.trans.txt").write_text(f"1-2-0000 {text}\n")


def test_a_vocab_size_too_small_is_refused_before_the_first_stage(stub, real, tmp_path):
    """sentencepiece refused a --vocab-size below what the text needs only at the BPE stage,
    after hours of downloads and fbank (prepare.sh checked only >= 1, mini_tts nothing)."""
    run, _ = stub
    dl_dir, work = tmp_path / "dl", tmp_path / "work"
    common = ["--work-dir", str(work), "--dl-dir", str(dl_dir), "--full-libri", "false"]
    # any text needs the 3 special pieces, the word-start mark and a character
    result = run(PREPARE, *common, "--stage", "5", "--vocab-size", "4", env=real)
    assert result.returncode == 2, result.stderr
    assert "--vocab-size 4: vocab_size must be at least 5" in result.stderr
    assert "nothing was run" in result.stderr and "stage 5" not in result.stderr
    # the training text there: its 10 letters, the word-start mark and the specials need 14
    _transcripts(dl_dir / "LibriSpeech" / "train-clean-100", "ABCDE FGHIJ")
    for script in (PREPARE, RUN):
        result = run(script, *common, "--stage", "5", "--stop-stage", "5", "--vocab-size", "13",
                     env=real)
        assert result.returncode == 2, result.stderr
        assert "--vocab-size 13: vocab_size 13 is too small for the training text: its 10 " \
            "characters" in result.stderr and "need at least 14" in result.stderr
        assert "nothing was run" in result.stderr and "stage 5" not in result.stderr
    _transcripts(work / "data" / "LibriSpeech" / "train-clean-5", "ABCDE FGHIJ")
    result = run(MINI_TTS, "--work-dir", str(work), "--stage", "1", "--stop-stage", "3",
                 "--vocab-size", "13", env=real)
    assert result.returncode == 2 and "need at least 14" in result.stderr, result.stderr
    assert "stage 1" not in result.stderr
    result = run(PREPARE, *common, "--stage", "5", "--stop-stage", "5", "--vocab-size", "14",
                 env=real)  # what it needs: trained
    assert result.returncode == 0 and "stage 5: BPE" in result.stderr, result.stderr
