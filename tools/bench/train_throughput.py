"""Training throughput of a recipe on synthetic LibriSpeech-like batches.

What is measured, for the recipe's model (default: the LibriSpeech M pruned-transducer recipe,
Conformer 384 x 17, vocab 500) trained by :class:`asr.train.trainer.Trainer` exactly as
``asr train`` does (autocast, GradScaler for fp16, clipping, AdamW, the running average):

1. Per AMP dtype (fp16, bf16): batches as the bucketing sampler forms them at the recipe's
   ``data.max_duration`` from LibriSpeech-like utterance durations
   (:mod:`asr.testing.synthetic`), ``--steps`` of them spread over the duration buckets (after
   ``--warmup`` steps, the first one the longest batch): audio seconds trained per second of
   wall clock, median step time, and the peak of ``torch.cuda.max_memory_allocated`` (also the
   peak on the worst-case batch: as many ``max_cut_duration`` utterances as fit).
2. The largest ``max_duration`` whose worst-case batch trains one step (forward, backward and
   optimizer step) without running out of memory, in the recipe's AMP dtype: from the measured
   peak the search extrapolates a first guess, then grows or bisects, to a resolution of one
   ``max_cut_duration`` utterance or 5 %, within ``--fit-probes`` probes and the time budget.
   Probes run in this process: after an out-of-memory error the gradients are dropped and the
   cache emptied before the next probe.

Features are random, so only compute and memory are measured (no data loading). A fp16 step
that the GradScaler skips (overflow) still counts: it did the forward and backward.

Usage::

    python tools/bench/train_throughput.py --device cuda --markdown out/train.md
    python tools/bench/train_throughput.py --device cpu --tiny --max-duration 6 \\
        --max-cut-duration 3 --steps 1 --warmup 1 --fake-memory-limit 10   # dry run
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: this checkout's asr before any other on the path

from asr.config import load_config  # noqa: E402
from asr.experiment import ExperimentConfig, build_model  # noqa: E402
from asr.fileio import write_text_atomic  # noqa: E402
from asr.testing.synthetic import (  # noqa: E402
    bucketed_batches,
    librispeech_durations,
    shrink_experiment,
    synthetic_batch,
    worst_case_durations,
)
from asr.train.distributed import DistInfo  # noqa: E402
from asr.train.trainer import Trainer  # noqa: E402
from tools.bench._args import COUNT, NON_NEGATIVE, NON_NEGATIVE_INT  # noqa: E402

VOCAB = 500
OOM_ERRORS = tuple(
    e for e in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if e
)


class Bench:
    """A model, its trainer for one AMP dtype and the bookkeeping of peak memory."""

    def __init__(self, cfg: ExperimentConfig, model, device: torch.device, amp_dtype: str,
                 fake_limit: float, exp_dir: Path) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.fake_limit = fake_limit
        train = dataclasses.replace(cfg.train, use_amp=True, amp_dtype=amp_dtype,
                                    cpu_amp=not self.cuda)
        self.trainer = Trainer(model, cfg.optim, train, exp_dir, train_batches=lambda e, s: [],
                               dist=DistInfo(device=device))
        self.feat_dim = cfg.data.fbank.num_mel_bins
        self.generator = torch.Generator().manual_seed(0)

    def step(self, durations: list[float]) -> tuple[float, float | None]:
        """One training step on a batch of ``durations``; returns (seconds, peak GiB or None)."""
        if self.fake_limit > 0 and sum(durations) > self.fake_limit:
            raise OOM_ERRORS[0](f"fake out of memory: {sum(durations):.0f} s > "
                                f"--fake-memory-limit {self.fake_limit:g} s")
        batch = synthetic_batch(durations, VOCAB, self.generator, self.feat_dim)
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        self.trainer._forward_backward(batch)
        self.trainer._optimizer_step()
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None
        return seconds, peak

    def try_step(self, durations: list[float]) -> tuple[float, float | None] | None:
        """:meth:`step`, or None when it ran out of memory (state cleaned up for the next)."""
        try:
            return self.step(durations)
        except OOM_ERRORS:
            pass  # leave the except block first: its traceback holds the step's tensors
        self.trainer.optimizer.zero_grad(set_to_none=True)
        self.trainer._accum_utts = 0.0
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        return None

    def close(self) -> None:
        self.trainer.optimizer.zero_grad(set_to_none=True)
        del self.trainer
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def timed_batches(cfg: ExperimentConfig, max_duration: float, max_cut: float, steps: int,
                  seed: int) -> tuple[list[list[float]], int]:
    """``steps`` batches at evenly spaced quantiles of the batches' mean duration (buckets hold
    equal audio, so this follows the training mix), shuffled; and how many batches one pass
    over the pool made. The pool holds ~20 batches per bucket and the last, partly filled batch
    of each bucket is not picked: in LibriSpeech (~190 batches per bucket) those are rare."""
    gen = torch.Generator().manual_seed(seed)
    count = int(20 * cfg.data.num_buckets * max_duration / 12.4) + 100
    pool = librispeech_durations(count, gen, max_cut)
    batches = bucketed_batches(pool, max_duration, cfg.data.num_buckets, gen)
    full = [b for b in batches if sum(b) >= max_duration - max_cut]
    ordered = sorted(full or batches, key=lambda b: sum(b) / len(b))
    picked = [ordered[min(len(ordered) - 1, int((i + 0.5) * len(ordered) / steps))]
              for i in range(steps)]
    order = torch.randperm(len(picked), generator=gen).tolist()
    return [picked[i] for i in order], len(batches)


def measure(bench: Bench, batches: list[list[float]], warmup: list[list[float]]) -> dict:
    for durations in warmup:
        bench.step(durations)
    times, peaks, audio = [], [], 0.0
    for durations in batches:
        seconds, peak = bench.step(durations)
        times.append(seconds)
        peaks.append(peak)
        audio += sum(durations)
    return {
        "audio_s_per_s": audio / sum(times),
        "median_step_s": statistics.median(times),
        "utts_per_batch": sum(len(b) for b in batches) / len(batches),
        "peak_gib": max(peaks) if peaks[0] is not None else None,
    }


def search_fit(bench: Bench, known_fit: float, peak_at_fit: float | None, base_gib: float,
               max_cut: float, probes: int, deadline: float, log: list) -> tuple[float, float]:
    """Largest worst-case max_duration that trains (to one utterance) and the smallest that
    failed (inf if none did), starting above ``known_fit``."""
    lo, hi = known_fit, math.inf
    if bench.cuda and peak_at_fit and peak_at_fit > base_gib:
        total = torch.cuda.get_device_properties(bench.device).total_memory / 2**30
        guess = known_fit * (0.92 * total - base_gib) / (peak_at_fit - base_gib)
    else:
        guess = known_fit * 1.5
    for _ in range(probes):
        if time.monotonic() > deadline:
            log.append("time budget reached: search stopped")
            break
        target = guess if math.isinf(hi) else (lo + hi) / 2
        target = max(max_cut * math.floor(target / max_cut), lo + max_cut)
        if target >= hi:
            break
        result = bench.try_step(worst_case_durations(target, max_cut))
        if result is None:
            hi = target
            log.append(f"{target:g} s: out of memory")
        else:
            lo = target
            log.append(f"{target:g} s: fits, peak {_gib(result[1])}, step {result[0]:.2f} s")
            guess = target * 1.25
        if hi - lo <= max(max_cut, 0.05 * lo):  # one utterance, or 5 %
            break
    return lo, hi


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe",
                        default=str(ROOT / "recipes/librispeech/conformer_transducer.yaml"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"],
                        choices=["float16", "bfloat16"])
    parser.add_argument("--max-duration", type=NON_NEGATIVE, default=0.0,
                        help="seconds of audio per batch (0: the recipe's data.max_duration)")
    parser.add_argument("--max-cut-duration", type=NON_NEGATIVE, default=0.0,
                        help="longest utterance (0: the recipe's data.max_cut_duration)")
    parser.add_argument("--steps", type=COUNT, default=6, help="timed steps per dtype")
    parser.add_argument("--warmup", type=NON_NEGATIVE_INT, default=2, help="untimed steps first")
    parser.add_argument("--fit-probes", type=NON_NEGATIVE_INT, default=6,
                        help="steps the largest-max_duration search may try (0: no search)")
    parser.add_argument("--fit-dtype", default="", choices=["", "float16", "bfloat16"],
                        help="AMP dtype of the search (default: the recipe's train.amp_dtype)")
    parser.add_argument("--time-budget", type=NON_NEGATIVE, default=0.0,
                        help="seconds after which no new measurement starts (0: none)")
    parser.add_argument("--tiny", action="store_true", help="1-layer stand-in model (dry run)")
    parser.add_argument("--fake-memory-limit", type=NON_NEGATIVE, default=0.0,
                        help="pretend batches above this many seconds run out of memory (dry "
                        "run of the search on a CPU)")
    parser.add_argument("--threads", type=NON_NEGATIVE_INT, default=0)
    parser.add_argument("--markdown", help="write the tables as markdown to this file")
    parser.add_argument("--json", help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    deadline = start + args.time_budget if args.time_budget > 0 else math.inf
    device = torch.device(args.device)

    cfg = load_config(ExperimentConfig, args.recipe)
    if args.tiny:
        cfg = shrink_experiment(cfg)
    max_duration = args.max_duration or cfg.data.max_duration
    max_cut = args.max_cut_duration or cfg.data.max_cut_duration
    fit_dtype = args.fit_dtype or cfg.train.amp_dtype
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB)
    params = sum(p.numel() for p in model.parameters())
    batches, pool_batches = timed_batches(cfg, max_duration, max_cut, args.steps, seed=1)
    longest = [max_cut] * max(1, int(max_duration // max_cut))
    warmup = ([longest] + batches)[: args.warmup]
    try:
        recipe = str(Path(args.recipe).resolve().relative_to(ROOT))
    except ValueError:
        recipe = args.recipe
    results = {"recipe": recipe, "device": str(device), "params": params,
               "max_duration": max_duration,
               "max_cut_duration": max_cut, "tiny": args.tiny, "rows": [], "fit": None,
               "notes": []}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    if args.fake_memory_limit > 0:
        results["notes"].append(f"Out of memory is pretended above {args.fake_memory_limit:g} s "
                                "of audio per batch (--fake-memory-limit, a dry run).")

    def write() -> None:
        """The results so far (after each dtype: a stopped run keeps what it measured)."""
        if args.markdown:
            _write_markdown(Path(args.markdown), results)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(args.json, json.dumps(results, indent=2))

    print(f"{results['recipe']}: {params / 1e6:.1f}M parameters, device {device}, "
          f"max_duration {max_duration:g} s, max_cut_duration {max_cut:g} s, "
          f"{len(batches)} timed batches of {pool_batches} (mean "
          f"{sum(map(len, batches)) / len(batches):.1f} utterances)")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes:
            if time.monotonic() > deadline:
                results["notes"].append(f"{dtype}: skipped (time budget)")
                continue
            bench = Bench(cfg, model, device, dtype, args.fake_memory_limit, Path(tmp))
            row = {"amp": dtype, "effective": str(bench.trainer.amp_dtype).split(".")[-1],
                   "scaler": bench.trainer.scaler.is_enabled()}
            try:
                row.update(measure(bench, batches, warmup))
                # What stays allocated between steps: weights, optimizer state, running average.
                base_gib = torch.cuda.memory_allocated() / 2**30 if bench.cuda else 0.0
                worst = bench.try_step(worst_case_durations(max_duration, max_cut))
                row["worst_case_peak_gib"] = None if worst is None else worst[1]
                row["worst_case_fits"] = worst is not None
                print(f"{dtype}: {row['audio_s_per_s']:.1f} audio s/s, median step "
                      f"{row['median_step_s']:.3f} s, peak {_gib(row['peak_gib'])}, worst-case "
                      f"batch {'peak ' + _gib(row['worst_case_peak_gib']) if worst else 'OOM'}")
                if dtype == fit_dtype and args.fit_probes > 0 and worst is not None:
                    log: list[str] = []
                    lo, hi = search_fit(bench, max_duration, row["worst_case_peak_gib"], base_gib,
                                        max_cut, args.fit_probes, deadline, log)
                    results["fit"] = {"amp": dtype, "largest_fit": lo, "smallest_oom": hi,
                                      "log": log}
                    print(f"largest max_duration that fits ({dtype}): {lo:g} s"
                          + ("" if math.isinf(hi) else f" ({hi:g} s ran out of memory)"))
            except Exception as err:  # one dtype failing must not lose the other's row
                row["error"] = f"{type(err).__name__}: {err}"[:300]
                print(f"{dtype}: FAILED {row['error']}")
            results["rows"].append(row)
            bench.close()
            write()
    write()
    return 1 if any("error" in r for r in results["rows"]) else 0


def _write_markdown(path: Path, results: dict) -> None:
    gpu = f" ({results['gpu']})" if "gpu" in results else ""
    lines = [
        f"{results['recipe']}{' (tiny stand-in)' if results['tiny'] else ''}: "
        f"{results['params'] / 1e6:.1f}M parameters, device {results['device']}{gpu}; synthetic "
        f"LibriSpeech-like batches at max_duration {results['max_duration']:g} s (utterances up "
        f"to {results['max_cut_duration']:g} s).",
        "",
        "| AMP | audio s / s | median step s | utterances / batch | peak GiB | worst-case batch "
        "peak GiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        name = row["amp"] + (" + GradScaler" if row.get("scaler") else "")
        if row["effective"] != row["amp"]:
            name += f" (runs as {row['effective']} here)"
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} | | | | |")
            continue
        worst = (_gib(row["worst_case_peak_gib"]).replace(" GiB", "")
                 if row.get("worst_case_fits") else "OOM")
        lines.append(
            f"| {name} | {row['audio_s_per_s']:.1f} | {row['median_step_s']:.3f} | "
            f"{row['utts_per_batch']:.1f} | {_gib(row['peak_gib']).replace(' GiB', '')} | "
            f"{worst} |"
        )
    fit = results.get("fit")
    if fit:
        upper = "" if math.isinf(fit["smallest_oom"]) else (
            f"; {fit['smallest_oom']:g} s ran out of memory")
        lines += ["", f"Largest max_duration whose worst-case batch trains ({fit['amp']}): "
                  f"{fit['largest_fit']:g} s{upper}. Probes: " + "; ".join(fit["log"]) + "."]
    for note in results["notes"]:
        lines += ["", note]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "\n".join(lines) + "\n")  # a stop mid-write keeps the last table


if __name__ == "__main__":
    raise SystemExit(main())
