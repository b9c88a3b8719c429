"""``asr train`` under ``torchrun``: 2 processes make the same update as 1 process with
accum_grad=2.

Rank r of 2 gets batches r, r+2, ... of the same sampler stream, so the first optimizer step of a
2-process run sees batches 0 and 1, like one process accumulating 2 batches. Dropout, SpecAugment
and dynamic chunks are off so both runs compute the same functions; the gradients (hence the
parameters after one AdamW step) must agree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchrun_helpers import run_torchrun
from train_helpers import tiny_experiment, write_yaml

from asr.checkpoints.io import safe_torch_load


def _env() -> dict[str, str]:
    """One thread per process, and this checkout's asr first on the import path of every process
    (an editable install may point at another checkout)."""
    root = str(Path(__file__).resolve().parents[2])
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))


#: ``python -m asr.cli.main`` with an atexit handler that writes ``$ATEXIT.<rank>``, and an object
#: whose destructor writes ``$FINALIZED.<rank>``: that file exists once that process' interpreter
#: finalized (cleared the launcher's module).
ASR_MAIN = """\
import atexit, os, runpy
atexit.register(lambda: open(f"{os.environ['ATEXIT']}.{os.environ['RANK']}", "w").close())
class Finalized:
    def __del__(self, open=open, path=f"{os.environ['FINALIZED']}.{os.environ['RANK']}"):
        open(path, "w").close()
finalized = Finalized()
runpy.run_module("asr.cli.main", run_name="__main__", alter_sys=True)
"""


#: The line that rank 0 of ``asr train`` logs once its process group is up
#: (:func:`asr.train.distributed.setup_distributed`): ``up`` of :func:`run_torchrun`, the same
#: for every rank (no ``{rank}``: the other ranks log no INFO line to the console,
#: :func:`asr.cli.main.console_logging`; the group's set-up is one collective, up on every rank
#: once it is on rank 0).
TRAIN_UP = "INFO asr.train.distributed: initialised gloo process group: rank 0 of 2"


def _train_two(main: list[str], exp_dir: Path, *overrides: str,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``main`` (``asr train``'s command) in 2 processes into ``exp_dir``, made anew for each
    attempt: a retried launch cannot resume from the failed attempt's checkpoints."""
    return run_torchrun([*main, "--exp-dir", str(exp_dir), *overrides], nproc=2,
                        env=env or _env(), timeout=300, fresh=exp_dir, up=TRAIN_UP)


def _deterministic_experiment(root):
    cfg = tiny_experiment(root, max_steps=1, dev_wer=False)
    cfg["data"]["spec_augment"] = {"enabled": False}
    cfg["data"]["shuffle"] = False
    cfg["encoder"].update(dropout=0.0, attention_dropout=0.0, dynamic_chunk_training=False)
    return cfg


@pytest.mark.slow
def test_two_process_asr_train_equals_one_process_accumulating_two_batches(tmp_path, tiny_corpus):
    config = write_yaml(_deterministic_experiment(tiny_corpus), tmp_path / "ddp.yaml")
    env = _env()
    main = ["-m", "asr.cli.main", "train", "--config", str(config), "--num-threads", "1"]
    launcher = tmp_path / "asr_main.py"
    launcher.write_text(ASR_MAIN)
    run = _train_two([str(launcher), *main[2:]], tmp_path / "two",
                     env=dict(env, FINALIZED=str(tmp_path / "finalized"),
                              ATEXIT=str(tmp_path / "atexit")))
    # each process ended with status 0 after its last log line and its atexit handlers,
    # without the rest of the interpreter's finalization, which torch's gloo threads could
    # abort (asr.process_exit); rank 0 alone logged INFO lines to the console, once each
    assert run.stderr.count("training stopped at step 1 (0 epochs done)") == 1, run.stderr
    assert " INFO " in run.stderr and " rank 1 " not in run.stderr, run.stderr
    assert sorted(p.name for p in tmp_path.glob("atexit.*")) == ["atexit.0", "atexit.1"]
    assert not list(tmp_path.glob("finalized.*"))
    subprocess.run([sys.executable, *main, "--exp-dir", str(tmp_path / "one"),
                    "--set", "train.accum_grad=2"], env=env, check=True, capture_output=True,
                   timeout=300)
    two = safe_torch_load(tmp_path / "two" / "checkpoint-1.pt")
    one = safe_torch_load(tmp_path / "one" / "checkpoint-1.pt")
    assert two["progress"]["step"] == one["progress"]["step"] == 1
    assert len(two["rng_per_rank"]) == 2
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    # The step did something: AdamW moved the weights away from their (seeded) initial values.
    fresh = _initial_weights(tmp_path / "one")
    assert any(not torch.equal(fresh[k], v) for k, v in one["model"].items())


@pytest.mark.slow
def test_two_processes_accumulating_equal_one_process_accumulating_twice_as_many(tmp_path,
                                                                                 tiny_corpus):
    """With accum_grad=2 the first batch of each step keeps its gradients local (DDP no_sync)
    and the second all-reduces both: the step must equal one process accumulating 4 batches."""
    config = write_yaml(_deterministic_experiment(tiny_corpus), tmp_path / "ddp.yaml")
    env = _env()
    main = ["-m", "asr.cli.main", "train", "--config", str(config), "--num-threads", "1"]
    _train_two(main, tmp_path / "two", "--set", "train.accum_grad=2")
    subprocess.run([sys.executable, *main, "--exp-dir", str(tmp_path / "one"),
                    "--set", "train.accum_grad=4"], env=env, check=True, capture_output=True,
                   timeout=300)
    two = safe_torch_load(tmp_path / "two" / "checkpoint-1.pt")
    one = safe_torch_load(tmp_path / "one" / "checkpoint-1.pt")
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def _initial_weights(exp_dir):
    from asr.experiment import build_model, load_experiment_config
    from asr.tokenizers import load_tokenizer

    cfg = load_experiment_config(exp_dir)
    torch.manual_seed(cfg.train.seed)
    return build_model(cfg, load_tokenizer(cfg.tokenizer_dir).vocab_size).state_dict()
