"""The trainer's dev WER under ``torchrun``: every rank decodes its own share of the dev cuts and
the error counts are summed, giving the WER of one process decoding them all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torchrun_helpers import UP_LINE, run_torchrun

import asr.run.train as run_train
from asr.data.cut_ids import load_eval_cuts
from asr.experiment import load_trained_model
from asr.run.evaluate import Recognition

SCRIPT = r"""
import json, logging, os, sys
sys.path[:0] = [os.environ["TEST_DIR"], os.path.dirname(os.environ["TEST_DIR"])]
import asr.run.train as run_train
from asr.data.cut_ids import load_eval_cuts
from asr.experiment import load_trained_model
from asr.train.distributed import cleanup_distributed, setup_distributed
from test_dev_wer_ddp import first_two_words
from asr.process_exit import end_process
from torchrun_helpers import report_up

info = setup_distributed("cpu")
report_up(info.rank)
logging.basicConfig(filename=os.path.join(os.environ["OUT_DIR"], f"rank{info.rank}.log"),
                    level=logging.INFO)
cfg, tokenizer, model, _ = load_trained_model(os.environ["TRAINED"])
cuts = load_eval_cuts(cfg.data.manifest_dir, cfg.data.dev_cuts)
decoded, fail = [], []

def recognize(*args, **kwargs):
    if fail:
        raise RuntimeError("out of memory (a test's)")
    recognitions, seconds = first_two_words(*args, **kwargs)
    decoded.extend(r.cut_id for r in recognitions)
    return recognitions, seconds

run_train.recognize = recognize
dev_wer = run_train.DevWer(cuts, cfg, tokenizer, info.device, dist=info)
wer = dev_wer(model)
share = list(decoded)
if info.rank == 1:
    fail.append(True)  # this rank's share fails: every rank goes on without a WER
failed = dev_wer(model)
with open(os.path.join(os.environ["OUT_DIR"], f"rank{info.rank}.json"), "w") as f:
    json.dump({"wer": wer, "decoded": share, "failed": failed}, f)
cleanup_distributed()
end_process(0)
"""

_recognize = run_train.recognize


def first_two_words(*args, **kwargs) -> tuple[list[Recognition], float]:
    """:func:`asr.run.evaluate.recognize`, each hypothesis then replaced by its reference's first
    two words: the tiny model's greedy hypotheses are empty, a WER of 100% however the counts
    are combined; these give one that only the right sums give."""
    recognitions, seconds = _recognize(*args, **kwargs)
    shortened = [Recognition(r.cut_id, r.ref, " ".join(r.ref.split()[:2])) for r in recognitions]
    return shortened, seconds


def test_two_ranks_decode_a_share_each_and_get_the_wer_of_one_process(trained, tmp_path,
                                                                       monkeypatch):
    """Rank 0 alone decoded the whole dev set while the other ranks waited in the next
    collective (NCCL gives up after 10 minutes: a large dev set killed the job). A share that
    fails on one rank leaves every rank without a WER, none waiting for it; that rank logs its
    traceback, and rank 0's warning (in train.log) names it: it gave only the count of failed
    ranks, so train.log did not say whose log holds the error."""
    cfg, tokenizer, model, _ = load_trained_model(trained)
    cuts = load_eval_cuts(cfg.data.manifest_dir, cfg.data.dev_cuts)
    monkeypatch.setattr(run_train, "recognize", first_two_words)
    one = run_train.DevWer(cuts, cfg, tokenizer, torch.device("cpu"))(model)
    assert one is not None and 0.0 < one < 100.0
    script = tmp_path / "dev_wer.py"
    script.write_text(SCRIPT)
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, TRAINED=str(trained), OUT_DIR=str(tmp_path), OMP_NUM_THREADS="1",
               TEST_DIR=str(Path(__file__).parent),
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    run_torchrun([str(script)], nproc=2, env=env, timeout=180, up=UP_LINE)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["wer"] for r in ranks] == [one, one]
    shares = [r["decoded"] for r in ranks]
    assert all(shares) and not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(c.id for c in cuts)
    assert [r["failed"] for r in ranks] == [None, None]
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in (0, 1)]
    assert "dev WER: the decoding failed on rank 1 of 2 ranks" in logs[0]
    assert "out of memory (a test's)" not in logs[0]
    assert "failed on rank 1" in logs[1] and "RuntimeError: out of memory (a test's)" in logs[1]
