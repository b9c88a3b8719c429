"""The recipe scripts' own logic, against a stub ``asr`` (no model, no data, a second each): option
checking, which files the stages hand each other, and failures that must stop a script."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRI = REPO / "egs" / "librispeech" / "ASR"
RUN, PREPARE = LIBRI / "run.sh", LIBRI / "prepare.sh"
MINI_TTS = REPO / "egs" / "mini_tts" / "ASR" / "run.sh"
END = "@@end"

# `asr`, `python`, `lhotse` and `torchrun` of the stub venv: records each call's arguments (NUL-separated, END
# after the last), fails the subcommand named in $STUB_FAIL, and prints what the scripts read: a
# WER summary path for the decoders, a report for export-onnx, which with $STUB_NO_STREAMING has
# no streaming layout (as for a TDT, CTC or CIF model: exit 1, or 0 without a report with
# --if-supported).
STUB = f"""#!/usr/bin/env bash
printf '%s\\0' "$(basename "$0")" "$@" {END} >> "$STUB_LOG"
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
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    for program in ("asr", "python", "lhotse", "torchrun"):
        (venv_bin / program).write_text(STUB)
        (venv_bin / program).chmod((venv_bin / program).stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.txt"

    def run(script: Path, *args: str, fail: str = "", no_streaming: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "ASR_VENV": str(tmp_path / "venv"), "STUB_LOG": str(log),
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


def test_a_misspelt_searcher_is_refused_before_training(stub, tmp_path):
    """--searchers used to be read only by stage 7's `asr decode`, after training. The check
    runs in the real venv (the stub's python accepts anything); nothing is trained."""
    run, calls = stub
    real = {"ASR_VENV": sys.prefix, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = run(RUN, "--work-dir", str(tmp_path / "work"), "--stage", "6", "--stop-stage", "7",
                 "--searchers", "greedy trnasducer_beam", env=real)
    assert result.returncode == 2, result.stderr
    assert "--searchers: unknown ['trnasducer_beam']" in result.stderr
    assert "stage 6" not in result.stderr
    # known names pass the check; stage 7 then fails in `asr decode` (nothing was trained)
    result = run(RUN, "--work-dir", str(tmp_path / "work"), "--stage", "7", "--stop-stage", "7",
                 "--searchers", "greedy transducer_beam", env=real)
    assert "--searchers: unknown" not in result.stderr and "stage 7: decode" in result.stderr


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
    relative = os.path.relpath(tmp_path / "venv", REPO)
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


def test_stage_5_keeps_a_corpus_path_with_spaces_whole(stub, tmp_path):
    run, calls = stub
    dl_dir = tmp_path / "my corpora"
    result = run(PREPARE, "--work-dir", str(tmp_path / "work"), "--dl-dir", str(dl_dir),
                 "--full-libri", "false", "--stage", "5", "--lm-text", "a.txt b.txt")
    assert result.returncode == 0, result.stderr
    bpe, token_lm, word_lm = calls()
    assert bpe[:3] == ["bpe", "--transcripts", f"{dl_dir}/LibriSpeech/train-clean-100"]
    assert bpe[3] == "--output-dir"
    for lm in (token_lm, word_lm):  # --lm-text is a list of files
        start = lm.index("--transcripts") + 1
        assert lm[start:start + 3] == ["a.txt", "b.txt", "--tokenizer-dir" if lm is token_lm
                                       else "--order"]


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
    (shar_call, train_call) = calls()
    assert shar_call[0] == "shar" and train_call[0] == "train"
    assert shar_call[shar_call.index("--output-dir") + 1] == "data/shar/train-clean-100"
    assert "data.train_shar_dirs=[data/shar/train-clean-100]" in train_call


def test_mini_tts_stage_8_fails_when_scoring_fails(stub, tmp_path):
    run, calls = stub
    bias_dir = tmp_path / "work" / "data" / "LibriSpeech" / "biasing"
    bias_dir.mkdir(parents=True)
    for name in ("dev-biasing.hotwords.txt", "test-biasing.hotwords.txt", "distractors.txt"):
        (bias_dir / name).write_text("PHRASE\n")
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
    return bool(actual) and (actual[0] == documented[0] or actual[0].endswith("/" + documented[0])) \
        and _matches(documented[1:], actual[1:])


def test_the_librispeech_readme_shows_the_commands_its_stages_run(stub, tmp_path):
    """Each command recipes/librispeech/README.md says a stage runs is one the stage runs, in
    order (the stage 6 comment had lost the shuffled training manifest it trains on)."""
    run, calls = stub
    readme = (REPO / "recipes" / "librispeech" / "README.md").read_text(encoding="utf-8")
    runs = _documented_runs(readme)
    assert len(runs) >= 6, runs
    for i, ((script, *args), documented) in enumerate(runs):
        work = tmp_path / f"work{i}"
        for command in documented:  # what the earlier stages would have made (stage 8's weights)
            for option, value in zip(command, command[1:]):
                if option == "--output" and value.endswith(".safetensors"):
                    (work / value).parent.mkdir(parents=True, exist_ok=True)
                    (work / value).write_bytes(b"")
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
    result = run(RUN, "--work-dir", str(tmp_path / "work"), "--full-libri", "false", "--stage",
                 "5", "--stop-stage", "5", "--lm-text", "a.txt b.txt")
    assert result.returncode == 0, result.stderr
    bpe, token_lm, word_lm = calls()
    for lm in (token_lm, word_lm):
        start = lm.index("--transcripts") + 1
        assert lm[start:start + 2] == ["a.txt", "b.txt"]
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
