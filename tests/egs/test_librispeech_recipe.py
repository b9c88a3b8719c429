"""egs/librispeech/ASR: option parsing (default suite) and every stage but the download on a tiny
synthesized LibriSpeech-layout tree, training from Lhotse Shar shards (slow)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "egs" / "librispeech" / "ASR" / "run.sh"
PREPARE = REPO / "egs" / "librispeech" / "ASR" / "prepare.sh"
# 110 training utterances: text enough for the recipe's BPE stage
PARTS = {"train-clean-100": 110, "dev-clean": 3, "dev-other": 3, "test-clean": 3, "test-other": 3}
TINY_MODEL = [
    "encoder.d_model=32", "encoder.num_layers=1", "encoder.num_heads=2", "encoder.ff_dim=64",
    "encoder.conv_kernel_size=3", "encoder.subsampling_channels=8", "encoder.chunk_size=4",
    "encoder.left_chunks=2", "encoder.dynamic_chunk_sizes=[2,4]",
    "encoder.dynamic_left_chunks=[1,-1]",
    "heads.transducer.pred_dim=16", "heads.transducer.joiner_dim=16",
    "heads.transducer.warm_step=2",
    "data.max_duration=30", "data.max_cut_duration=8", "data.num_buckets=2", "data.num_workers=0",
    "optim.warmup_steps=2", "train.max_epochs=1", "train.device=cpu", "train.average_period=1",
    "train.checkpoint_interval=0",
]


def _bash(script: Path, *args: str, timeout: float = 60,
          venv: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs ``script`` with this checkout's asr, also for the venv's console script; ``venv``
    (the ``real`` fixture's environment) for one whose asr is imported once."""
    env = {**os.environ, "ASR_VENV": str(Path(sys.executable).parent.parent),
           "PYTHONPATH": str(REPO), **(venv or {})}
    return subprocess.run(["bash", str(script), "--skip-setup", "true", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("script", [RUN, PREPARE, REPO / "egs" / "mini_tts" / "ASR" / "run.sh"])
def test_scripts_print_usage_and_reject_unknown_options(script):
    usage = _bash(script, "--help")
    assert usage.returncode == 0 and "--stage N" in usage.stderr
    bad = _bash(script, "--stagee", "3")
    assert bad.returncode == 2 and "unknown option --stagee" in bad.stderr


def test_download_stage_is_skipped_for_an_existing_tree(tmp_path, real):
    for part in PARTS:
        (tmp_path / "dl" / "LibriSpeech" / part).mkdir(parents=True)
    done = _bash(RUN, "--work-dir", str(tmp_path / "work"), "--dl-dir", str(tmp_path / "dl"),
                 "--full-libri", "false", "--stage", "0", "--stop-stage", "0", venv=real)
    assert done.returncode == 0, done.stderr
    assert "holds every part; no download" in done.stderr
    missing = _bash(RUN, "--recipe", "no_such_recipe", venv=real)
    assert missing.returncode == 2 and "no_such_recipe.yaml" in missing.stderr


def test_full_libri_selects_the_training_parts_in_one_place(tmp_path, real):
    """prepare.sh (download, manifests, fbank) and run.sh (Shar shards) share one mapping."""
    parts = REPO / "egs" / "librispeech" / "ASR" / "train_parts.sh"
    for flag, expected in [("true", "train-clean-100 train-clean-360 train-other-500"),
                           ("false", "train-clean-100")]:
        out = subprocess.run(["bash", "-c", f'. "{parts}"; librispeech_train_parts {flag}'],
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected
    for script in (RUN, PREPARE):
        assert "train-clean-360" not in script.read_text(), script
    for part in ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100"):
        (tmp_path / "dl" / "LibriSpeech" / part).mkdir(parents=True)
    done = _bash(PREPARE, "--work-dir", str(tmp_path / "work"), "--dl-dir", str(tmp_path / "dl"),
                 "--full-libri", "false", "--stage", "0", "--stop-stage", "0", venv=real)
    assert done.returncode == 0 and "holds every part; no download" in done.stderr, done.stderr
    full = _bash(PREPARE, "--work-dir", str(tmp_path / "work"), "--dl-dir", str(tmp_path / "dl"),
                 "--stage", "1", "--stop-stage", "1", venv=real)
    assert "manifests of dev-clean dev-other test-clean test-other train-clean-100 " \
        "train-clean-360 train-other-500" in full.stderr, full.stderr


@pytest.mark.slow
def test_every_stage_but_download_on_a_synthesized_tree(tmp_path):
    from asr.synth.synthesize import synthesize_corpus

    synthesize_corpus(tmp_path / "dl", PARTS, seed=5, top_words=300, max_words=6, progress=False)
    work = tmp_path / "work"
    result = _bash(
        RUN, "--work-dir", str(work), "--dl-dir", str(tmp_path / "dl"), "--full-libri", "false",
        "--num-jobs", "1", "--vocab-size", "40", "--epoch", "1", "--avg", "1", "--use-shar", "true",
        "--lm-unit", "word", "--train-args", "--set " + " ".join(TINY_MODEL), timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    exp = work / "exp" / "conformer_transducer"
    assert (work / "data" / "fbank" / "librispeech_cuts_train-clean-100.jsonl.gz").is_file()
    assert (work / "data" / "lang_bpe_40" / "bpe.model").is_file()
    assert (work / "data" / "lang_bpe_40" / "token_4gram.arpa").is_file()
    assert (work / "data" / "lang_bpe_40" / "word_3gram.arpa").is_file()
    summary = exp / "transducer_beam" / "wer-summary-test-clean-transducer_beam.txt"
    assert "LM: word" in result.stderr and "lm_unit-word" in summary.read_text()
    assert list((work / "data" / "shar" / "train-clean-100").glob("features.*.tar"))
    assert "Lhotse Shar shards" in result.stderr  # written by stage 6 and read by training
    assert (exp / "epoch-1.pt").is_file() and (exp / "training.png").is_file()
    for searcher in ("transducer_greedy", "transducer_beam", "ctc_greedy", "ctc_prefix_beam"):
        for part in ("test-clean", "test-other"):
            assert (exp / searcher / f"wer-summary-{part}-{searcher}.txt").is_file(), searcher
            full = f"{searcher}-full-context"  # a streaming recipe is decoded in both modes
            assert (exp / full / f"wer-summary-{part}-{full}.txt").is_file(), full
    assert (exp / "averaged-epoch-1-avg-1-use-averaged-model.safetensors").is_file()
    assert (exp / "package").is_dir()
    for part in ("test-clean", "test-other"):  # stage 10: sherpa-onnx
        assert (exp / "onnx" / f"wer-summary-{part}-sherpa-onnx-transducer-int8.txt").is_file()
    assert "stage 0: " in result.stderr and "no download" in result.stderr
    # the offline recipe trains on the same data (full context: no chunk settings of its own)
    offline_model = [o for o in TINY_MODEL if "chunk" not in o]
    offline = _bash(
        RUN, "--work-dir", str(work), "--dl-dir", str(tmp_path / "dl"), "--full-libri", "false",
        "--recipe", "conformer_transducer_offline", "--stage", "6", "--stop-stage", "7",
        "--vocab-size", "40",
        "--epoch", "1", "--avg", "1", "--searchers", "greedy", "--test-parts", "test-clean",
        "--train-args", "--set " + " ".join(offline_model), timeout=600,
    )
    assert offline.returncode == 0, offline.stderr[-3000:]
    offline_exp = work / "exp" / "conformer_transducer_offline"
    assert (offline_exp / "epoch-1.pt").is_file()
    assert not list(offline_exp.glob("*-full-context"))  # already full context: decoded once


def test_mini_tts_refuses_a_time_budget_too_small_for_training(tmp_path, real):
    (tmp_path / "data" / "lang_bpe_128").mkdir(parents=True)  # stage 3's tokenizer
    (tmp_path / "data" / "lang_bpe_128" / "bpe.model").write_bytes(b"")
    result = _bash(REPO / "egs" / "mini_tts" / "ASR" / "run.sh", "--work-dir", str(tmp_path),
                   "--stage", "4", "--stop-stage", "4", "--time-budget", "100", venv=real)
    assert result.returncode == 1
    assert "of the 100 s time budget left for training" in result.stderr
    assert not (tmp_path / "exp").exists()


def test_librispeech_refuses_an_unknown_lm_unit():
    result = _bash(RUN, "--stage", "7", "--stop-stage", "7", "--lm-unit", "char")
    assert result.returncode == 2  # a bad option value, as parse_options.sh exits
    assert "--lm-unit must be none, token or word, got char" in result.stderr


def test_mini_tts_refuses_an_unknown_lm_unit(tmp_path):
    result = _bash(REPO / "egs" / "mini_tts" / "ASR" / "run.sh", "--work-dir", str(tmp_path),
                   "--stage", "5", "--stop-stage", "5", "--lm-unit", "char")
    assert result.returncode == 2
    assert "--lm-unit must be token or word, got char" in result.stderr


# Stage 6 with --nproc 2 under a stand-in venv: its `asr` accepts the checks, its `torchrun`
# notes its arguments and pid and runs the real torchrun with run.sh's options on TRAIN_SCRIPT
# (one process) instead of `-m asr.cli.main train ...`, or, with FAKE_STATUS set, exits with it.
FAKE_TORCHRUN = r'''#!/usr/bin/env bash
printf '%s\n' "$@" > "$FAKE_DIR/torchrun-args"
if [ -n "${FAKE_LOG_LINE:-}" ]; then  # logs a line, stamped by a clock 25 years behind ours
  exp=$(sed -n '/^--exp-dir$/{n;p}' "$FAKE_DIR/torchrun-args")
  mkdir -p "$exp" && printf '%s\n' "$FAKE_LOG_LINE" >> "$exp/train.log"
  touch -d @1000000000 "$exp/train.log"
fi
[ -n "${FAKE_STATUS:-}" ] && exit "$FAKE_STATUS"
options=()
while [ "$1" != -m ]; do options+=("$1"); shift; done
while [ "$1" != --exp-dir ]; do shift; done
echo $$ > "$FAKE_DIR/torchrun.pid"
exec "$FAKE_PYTHON" -m torch.distributed.run "${options[@]}" --nproc-per-node 1 \
  "$FAKE_DIR/train.py" "$2"
'''

# A training that runs until a preemption signal stops it, exiting as `asr train` does.
TRAIN_SCRIPT = r'''
import logging, os, sys, time
import torch
from torch import nn
from asr.train.optim import OptimConfig
from asr.train.preemption import TrainingPreempted
from asr.train.state import TrainConfig
from asr.train.trainer import Trainer
from asr.types import Batch

class Out:
    def __init__(self, loss, n):
        self.loss, self.num_utterances, self.metrics = loss, n, {}

class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, batch, step=None):
        open(os.path.join(os.environ["FAKE_DIR"], "started"), "a").close()
        time.sleep(0.05)
        return Out((self.lin(batch.feats.mean(1)) ** 2).sum(), batch.batch_size)

def batches(epoch, skip, world_size):
    for _ in range(100000):
        yield Batch(torch.ones(2, 3, 2), torch.tensor([3, 3]), torch.ones(2, 1, dtype=torch.long),
                    torch.tensor([1, 1]))

logging.basicConfig(level=logging.INFO)
trainer = Trainer(Slow(), OptimConfig(), TrainConfig(max_epochs=1, checkpoint_interval=0,
                  average_period=0), sys.argv[1], batches)
try:
    trainer.fit()
except TrainingPreempted as stop:
    sys.exit(stop.exit_status)
'''


def _stage_6(tmp_path: Path, **env: str) -> subprocess.Popen:
    """Starts run.sh's stage 6 with ``--nproc 2`` under the stand-in venv
    (:data:`FAKE_TORCHRUN`)."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "asr").write_text("#!/usr/bin/env bash\nexit 0\n")
    (bin_dir / "torchrun").write_text(FAKE_TORCHRUN)
    for tool in ("asr", "torchrun"):
        (bin_dir / tool).chmod(0o755)
    (tmp_path / "train.py").write_text(TRAIN_SCRIPT)
    env = dict(os.environ, ASR_VENV=str(tmp_path / "venv"), FAKE_DIR=str(tmp_path),
               FAKE_PYTHON=sys.executable, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env)
    return subprocess.Popen(
        ["bash", str(RUN), "--skip-setup", "true", "--work-dir", str(tmp_path / "work"),
         "--stage", "6", "--stop-stage", "6", "--nproc", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # its own process group, which the test ends (_end)


def _end(run: subprocess.Popen) -> None:
    """Ends whatever is left of :func:`_stage_6`'s processes (a training that a torchrun which
    died of the signal left behind keeps running)."""
    try:
        os.killpg(run.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_stage_6_passes_sigusr1_through_torchrun_and_exits_with_the_preemption_status(tmp_path):
    """SIGUSR1 (SLURM's notice before the time limit) sent to torchrun: torchrun hands it to the
    training process, which writes its checkpoint, and run.sh exits with 138, as `asr train`
    alone does (torchrun's own status says nothing of it). torchrun was started without
    SIGUSR1 among the signals it passes on, and died of it."""
    from asr.checkpoints.io import list_checkpoints

    run = _stage_6(tmp_path)
    try:
        started = tmp_path / "started"
        for _ in range(1200):  # the training's first step (at most 2 minutes)
            if started.exists() or run.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert started.exists(), run.communicate()[1][-3000:]
        os.kill(int((tmp_path / "torchrun.pid").read_text()), signal.SIGUSR1)
        _, stderr = run.communicate(timeout=120)
    finally:
        _end(run)
    assert run.returncode == 138, stderr[-3000:]
    args = (tmp_path / "torchrun-args").read_text().splitlines()
    handled = args[args.index("--signals-to-handle") + 1].split(",")
    assert {"SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1"} <= set(handled)
    exp = tmp_path / "work" / "exp" / "conformer_transducer"
    assert "preempted by SIGUSR1" in (exp / "train.log").read_text()
    assert list_checkpoints(exp)
    assert "stage 6: preempted (exit status 138" in stderr


PREEMPTED_LINE = ("2026-01-01 00:00:00 WARNING asr.train.trainer: preempted by SIGUSR1 at step 3: "
                  "its checkpoint is written, the same command resumes from it; exiting with 138")


@pytest.mark.parametrize("mtime", [1e9, time.time() + 86400], ids=["behind", "ahead"])
def test_stage_6_reports_a_failure_after_an_earlier_preemption_as_a_failure(tmp_path, mtime):
    """torchrun fails (status 1) without this run logging anything; the preemption that the
    log's last line tells of is an earlier run's: run.sh exits 1, not 138. Also when the log's
    time is ahead of ours (an NFS server's clock): run.sh took a log newer than its own marker
    in $TMPDIR for one this run wrote."""
    exp = tmp_path / "work" / "exp" / "conformer_transducer"
    exp.mkdir(parents=True)
    log = exp / "train.log"
    log.write_text(PREEMPTED_LINE + "\n")
    os.utime(log, (mtime, mtime))
    run = _stage_6(tmp_path, FAKE_STATUS="1")
    try:
        _, stderr = run.communicate(timeout=60)
    finally:
        _end(run)
    assert run.returncode == 1, stderr[-3000:]
    assert "preempted" not in stderr


def test_stage_6_reads_a_preemption_this_run_logged_whatever_the_logs_clock(tmp_path):
    """The training logs its preemption and torchrun exits 1, but the log's time is behind ours
    (an NFS server's clock): run.sh took the log for an older one than its marker in $TMPDIR
    and exited 1, not the preemption's 138."""
    run = _stage_6(tmp_path, FAKE_STATUS="1", FAKE_LOG_LINE=PREEMPTED_LINE)
    try:
        _, stderr = run.communicate(timeout=60)
    finally:
        _end(run)
    log = tmp_path / "work" / "exp" / "conformer_transducer" / "train.log"
    assert log.stat().st_mtime == 1e9  # the fake's stamp
    assert run.returncode == 138, stderr[-3000:]
    assert "stage 6: preempted (exit status 138" in stderr
