"""Benchmark: torchaudio full RNN-T vs our pruned RNN-T vs our TDT (forward + backward).

Each timing includes the joiner: the full and TDT losses need the joiner on the whole
(B, T, U + 1) lattice; the pruned loss runs the simple-loss projections (J -> V for encoder and
predictor), the mutual-information recursion twice, and the joiner only on the (B, T, R) band.
Inputs are the (B, T, J) encoder and (B, U + 1, J) predictor outputs (with gradients).

TDT rows (durations 0..4): ``tdt`` runs the recursion with the torch backend (one small tensor
op batch per anti-diagonal), ``tdt_triton`` with the Triton kernel (one launch per direction);
``pruned_tdt`` is the pruned TDT loss (:mod:`asr.losses.pruned_tdt`: simple TDT loss, pruning
bounds, joiner on the band; recursion backend ``auto``), compared with ``tdt`` by the goal line.
On a CPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1`` is set for that case's
subprocess), orders of magnitude slower than compiled code: there the row is a correctness and
plumbing check (same loss as ``tdt``), not a speed, and it is left out of the default methods.

Same inputs, checked values: every method gets the same encoder and predictor outputs and
tokens (drawn from their own generator), and the pruned rows the joiner of the row they prune
(``pruned``: ``full``; ``pruned_tdt``: ``tdt``). The trained loss of a pruned row is
``0.5 * simple + pruned term`` (as :class:`asr.heads.transducer.TransducerHead` trains it), so
its ``loss`` is not the full row's; the ``lattice`` value (the pruned term; for the full rows
their loss) is, and a ``check`` line per vocabulary compares them: equal (relative 1e-4) when
the band holds every path (``--prune-range`` >= U + 1), else at least the full loss (the band
leaves paths out). A check that fails makes the exit code 1.

Peak memory method: each case runs in its own fresh subprocess. The compared number is the
high-water mark of torch's own allocator during one forward+backward above what was allocated
before it, after one warm-up step (whose one-time buffers, such as cuBLAS's workspace, would add
the same constant to every method): on CUDA ``torch.cuda.max_memory_allocated``; on CPU the same
quantity read from the profiler's memory events (``profile_memory=True``: every allocation and
free with the running "Total Allocated"). A second column gives the growth of the process'
resident-set high-water mark (``ru_maxrss``) over the first step, which also counts one-time
library buffers and allocator slack, so it is only a rough upper bound.
Time: median of ``--repeats`` further runs (:func:`tools.bench._timing.median_seconds`).

Usage:
    python tools/bench/rnnt_loss.py                 # the table, B=8 T=200 U=50 V in {500, 2000}
    python tools/bench/rnnt_loss.py --vocab 500 --repeats 5 --device cuda
    python tools/bench/rnnt_loss.py --device cuda --batch 32 --frames 500 --tokens 100 \
        --vocab 500 5000 --joiner-dim 512 --markdown out/rnnt_loss.md   # the GPU check

A case that fails (e.g. the full loss running out of GPU memory at V=5000, where its
(B, T, U + 1, V) logits and their gradient alone need 2 x 32 GB) is reported as ``OOM``,
``timeout`` or ``failed`` and the others go on.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: this checkout's asr before any other on the path

from asr.fileio import write_text_atomic  # noqa: E402
from tools.bench._args import COUNT, NON_NEGATIVE, bounded  # noqa: E402
from tools.bench._timing import device_sync, median_seconds  # noqa: E402

METHODS = ("full", "pruned", "tdt", "tdt_triton", "pruned_tdt")
#: rows that run Triton's interpreter on a CPU (module docstring)
INTERPRETED = ("tdt_triton",)


def _build(method: str, args: argparse.Namespace, vocab: int):
    import torch

    from asr.heads.joiner import Joiner
    from asr.losses.pruned_rnnt import (
        do_rnnt_pruning,
        get_pruning_ranges,
        rnnt_loss_pruned,
        rnnt_loss_simple,
    )
    from asr.losses.pruned_tdt import tdt_loss_pruned, tdt_loss_simple, tdt_pruning_ranges
    from asr.losses.rnnt import rnnt_loss
    from asr.losses.tdt import tdt_loss

    device = torch.device(args.device)
    batch, frames, num_tokens, dim = args.batch, args.frames, args.tokens, args.joiner_dim
    # The inputs come from their own generator, so every method sees the same ones (the
    # modules below consume the global generator by amounts that differ between methods).
    gen = torch.Generator().manual_seed(1)
    enc = torch.randn(batch, frames, dim, generator=gen).to(device).requires_grad_()
    pred = torch.randn(batch, num_tokens + 1, dim, generator=gen).to(device).requires_grad_()
    tokens = torch.randint(1, vocab, (batch, num_tokens), generator=gen).to(device)
    torch.manual_seed(0)
    durations = (0, 1, 2, 3, 4)
    num_durations = len(durations) if "tdt" in method else 0
    joiner = Joiner(dim, dim, dim, vocab, num_durations).to(device)
    simple_outputs = vocab + (num_durations if method == "pruned_tdt" else 0)
    am_proj = torch.nn.Linear(dim, simple_outputs).to(device)
    lm_proj = torch.nn.Linear(dim, simple_outputs).to(device)
    frame_lens = torch.full((batch,), frames, device=device)
    token_lens = torch.full((batch,), num_tokens, device=device)

    def step() -> tuple[float, float]:
        """One forward + backward: (the loss trained on, its lattice term)."""
        if method == "full":
            loss = pruned = rnnt_loss(joiner(enc, pred), tokens, frame_lens, token_lens)
        elif method in ("tdt", "tdt_triton"):
            backend = "triton" if method == "tdt_triton" else "torch"
            loss = pruned = tdt_loss(joiner(enc, pred), tokens, frame_lens, token_lens,
                                     durations, backend=backend)
        elif method == "pruned_tdt":  # as TransducerHead: warmed-up scales, lm_only_scale 0.25
            simple, occupations = tdt_loss_simple(
                am_proj(enc), lm_proj(pred), tokens, frame_lens, token_lens, durations, 0.25,
                return_grad=True,
            )  # fmt: skip
            ranges = tdt_pruning_ranges(
                *occupations, frame_lens, token_lens, durations, args.prune_range
            )
            band = do_rnnt_pruning(
                joiner.project_encoder(enc), joiner.project_predictor(pred), ranges
            )
            pruned = tdt_loss_pruned(joiner.join(*band), tokens, ranges, frame_lens, token_lens,
                                     durations)
            loss = 0.5 * simple + pruned
        else:
            simple, (px_grad, py_grad) = rnnt_loss_simple(
                am_proj(enc),
                lm_proj(pred),
                tokens,
                frame_lens,
                token_lens,
                0.25,
                return_grad=True,
            )
            ranges = get_pruning_ranges(px_grad, py_grad, frame_lens, token_lens, args.prune_range)
            band = do_rnnt_pruning(
                joiner.project_encoder(enc), joiner.project_predictor(pred), ranges
            )
            pruned = rnnt_loss_pruned(joiner.join(*band), tokens, ranges, frame_lens, token_lens)
            loss = 0.5 * simple + pruned
        loss.backward()
        enc.grad = pred.grad = None
        joiner.zero_grad(set_to_none=True)
        am_proj.zero_grad(set_to_none=True)
        lm_proj.zero_grad(set_to_none=True)
        return float(loss.detach()), float(pruned.detach())

    return step


def run_case(method: str, vocab: int, args: argparse.Namespace) -> dict:
    """Runs one case in THIS process (called in a fresh subprocess)."""
    import torch

    torch.set_num_threads(args.threads)
    step = _build(method, args, vocab)
    cuda = args.device.startswith("cuda")
    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    loss, lattice = step()  # also the warm-up of the peak and the timings
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_base
    peak = _cuda_allocator_peak(step) if cuda else _cpu_allocator_peak(step)
    # warmed up by the two steps above
    seconds = median_seconds(step, args.repeats, device_sync(args.device), warm_up=False)
    return {
        "method": method,
        "vocab": vocab,
        "loss": loss,
        "lattice_loss": lattice,
        "seconds": seconds,
        "peak_mb": peak / 2**20,
        "rss_mb": rss_peak / 2**20,
    }


def _cuda_allocator_peak(step) -> float:
    """Bytes: ``torch.cuda.max_memory_allocated`` during ``step()`` minus what was allocated
    before it."""
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - base)


def _cpu_allocator_peak(step) -> float:
    """Bytes: max of torch's CPU "Total Allocated" during ``step()`` minus its value before."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    memory = sorted(
        (e for e in events if e.get("name") == "[memory]"), key=lambda e: float(e["ts"])
    )
    if not memory:
        return 0.0
    first = memory[0]["args"]
    before = first["Total Allocated"] - first["Bytes"]
    return float(max(e["args"]["Total Allocated"] for e in memory) - before)


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=COUNT, default=8)
    parser.add_argument("--frames", type=COUNT, default=200)
    parser.add_argument("--tokens", type=COUNT, default=50)
    parser.add_argument("--vocab", type=bounded(int, at_least=2, why="blank and one token"),
                        nargs="+", default=[500, 2000])
    parser.add_argument("--joiner-dim", type=COUNT, default=256)
    parser.add_argument("--prune-range", type=COUNT, default=5)
    parser.add_argument("--repeats", type=COUNT, default=3)
    parser.add_argument("--threads", type=COUNT, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", choices=METHODS,
                        help="default: all; on a CPU all but the interpreted ones (tdt_triton)")
    parser.add_argument("--markdown", help="also write the table as markdown to this file")
    parser.add_argument("--case-timeout", type=NON_NEGATIVE, default=0.0,
                        help="seconds allowed for each case's subprocess (0: no limit)")
    parser.add_argument("--one-case", nargs=2, metavar=("METHOD", "VOCAB"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.methods is None:
        cpu = not args.device.startswith("cuda")
        args.methods = [m for m in METHODS if not (cpu and m in INTERPRETED)]
    if args.one_case:
        print(json.dumps(run_case(args.one_case[0], int(args.one_case[1]), args)))
        return 0
    passthrough = [
        f"--batch={args.batch}",
        f"--frames={args.frames}",
        f"--tokens={args.tokens}",
        f"--joiner-dim={args.joiner_dim}",
        f"--prune-range={args.prune_range}",
        f"--repeats={args.repeats}",
        f"--threads={args.threads}",
        f"--device={args.device}",
    ]
    print(
        f"B={args.batch} T={args.frames} U={args.tokens} J={args.joiner_dim} "
        f"R={args.prune_range} device={args.device} threads={args.threads}; "
        "time = median fwd+bwd incl. joiner; peak = torch allocator high-water mark of one step "
        "(see module docstring); rss = maxrss growth over the first step; loss = what is "
        "trained (pruned: 0.5 simple + pruned term), lattice = the full or pruned lattice term"
    )
    header = (
        f"{'V':>5} {'method':>10} {'time s':>8} {'peak MB':>9} {'rss MB':>8} {'x faster':>9} "
        f"{'x less mem':>10}"
    )
    print(header)
    table: list[dict] = []
    checks_ok = True
    for vocab in args.vocab:
        rows = []
        for method in args.methods:
            interpret = method in INTERPRETED and not args.device.startswith("cuda")
            row = _run_one(method, vocab, passthrough, ROOT, args.case_timeout, interpret)
            if row.get("status", "ok") != "ok":
                print(f"{vocab:>5} {method:>10} FAILED: {row['status']}: {row.get('error', '')}")
            rows.append(row)
        ref = next((r for r in rows if r["method"] == "full" and "seconds" in r), None)
        for row in rows:
            if "seconds" not in row:
                continue
            row["x_faster"] = ref["seconds"] / row["seconds"] if ref else float("nan")
            row["x_less_mem"] = ref["peak_mb"] / max(row["peak_mb"], 1e-9) if ref else float("nan")
            print(
                f"{vocab:>5} {row['method']:>10} {row['seconds']:>8.3f} {row['peak_mb']:>9.1f} "
                f"{row['rss_mb']:>8.1f} {row['x_faster']:>9.2f} {row['x_less_mem']:>10.2f} "
                f"loss={row['loss']:.6g} lattice={row['lattice_loss']:.6g}"
                f"{' (interpreter)' if row.get('interpreted') else ''}"
            )
        for line, ok in lattice_checks(rows, args):
            print(f"check at V={vocab}: {line}")
            checks_ok &= ok
        table.extend(rows)
        if args.markdown:
            _write_markdown(Path(args.markdown), table, args)
    # Running out of memory is a result (the full loss at a large vocabulary); anything else is
    # not, and neither is a pruned loss that disagrees with the full loss it prunes.
    failed = any(r.get("status") in ("failed", "timeout") for r in table)
    return 1 if failed or not checks_ok else 0


#: (pruned method, the full-lattice method it prunes)
PRUNED_OF = (("pruned", "full"), ("pruned_tdt", "tdt"))
#: relative tolerance of the float32 comparisons
RTOL = 1e-4


def lattice_checks(rows: list[dict], args: argparse.Namespace) -> list[tuple[str, bool]]:
    """Each pruned loss against the full loss it prunes, on the same inputs and joiner:
    (a line saying what was compared, whether it held).

    The trained loss of a pruned row is ``0.5 * simple + pruned``, so its ``loss`` differs from
    the full row's by construction; what is comparable is its lattice term (``lattice_loss``),
    the loss of the joiner's band. A band of ``R >= U + 1`` symbols holds every path, and the
    term then equals the full loss; a narrower band leaves paths out, and the term (the negative
    log of a smaller sum of the same path probabilities) is at least the full loss.
    """
    by_method = {r["method"]: r for r in rows if "lattice_loss" in r}
    covers = args.prune_range >= args.tokens + 1
    lines = []
    for name, ref_name in PRUNED_OF:
        if name not in by_method or ref_name not in by_method:
            continue
        term, full = by_method[name]["lattice_loss"], by_method[ref_name]["lattice_loss"]
        slack = RTOL * max(abs(full), 1.0)
        if covers:
            ok = abs(term - full) <= slack
            what = (f"{name} lattice term {term:.6g} == {ref_name} loss {full:.6g} "
                    f"(R={args.prune_range} >= U+1={args.tokens + 1}: the band holds every path)")
        else:
            ok = term >= full - slack
            what = (f"{name} lattice term {term:.6g} >= {ref_name} loss {full:.6g} "
                    f"(R={args.prune_range} < U+1={args.tokens + 1}: the band leaves paths out)")
        lines.append((f"{what}: {'holds' if ok else 'MISMATCH'}", ok))
    return lines


def _run_one(method: str, vocab: int, passthrough: list[str], root: Path,
             timeout: float, interpret: bool = False) -> dict:
    """One case in a fresh subprocess (Triton's interpreter on if ``interpret``): its result
    row, or a row with the failure's status (``OOM`` when the allocator ran out of memory,
    ``timeout``, ``failed``)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one-case", method, str(vocab)]
    env = dict(os.environ, TRITON_INTERPRET="1") if interpret else None
    try:
        proc = subprocess.run(cmd + passthrough, capture_output=True, text=True, cwd=root,
                              check=False, timeout=timeout if timeout > 0 else None, env=env)
    except subprocess.TimeoutExpired:
        return {"method": method, "vocab": vocab, "status": "timeout",
                "error": f"no result within {timeout:g} s"}
    if proc.returncode == 0:
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]), interpreted=interpret)
    lines = proc.stderr.strip().splitlines()
    out_of_memory = "out of memory" in proc.stderr.lower()
    return {"method": method, "vocab": vocab, "status": "OOM" if out_of_memory else "failed",
            "error": lines[-1][:300] if lines else f"exit code {proc.returncode}"}


def _write_markdown(path: Path, table: list[dict], args: argparse.Namespace) -> None:
    """The table so far as markdown (rewritten after each vocabulary, so a run that is stopped
    keeps what it measured; replaced atomically, so a stop while it is written does too), with the
    V=500 goals of the pruned loss."""
    lines = [
        f"B={args.batch} T={args.frames} U={args.tokens} J={args.joiner_dim} "
        f"R={args.prune_range}, device {args.device}; time: median of {args.repeats} "
        "forward+backward steps incl. the joiner; peak: allocator high-water mark of one step "
        "above what was allocated before it.",
        "",
        "| V | method | time ms | peak MiB | x faster than full | x less memory than full | loss |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    def ratio(value: float) -> str:
        return "-" if value != value else f"{value:.2f}"  # NaN: the full loss has no result

    for row in table:
        if "seconds" in row:
            name = row["method"] + (" (interpreter)" if row.get("interpreted") else "")
            lines.append(
                f"| {row['vocab']} | {name} | {1000 * row['seconds']:.1f} | "
                f"{row['peak_mb']:.1f} | {ratio(row['x_faster'])} | {ratio(row['x_less_mem'])} | "
                f"{row['loss']:.6g} |"
            )
        else:
            lines.append(f"| {row['vocab']} | {row['method']} | {row['status']} | | | | |")
    if any(r.get("interpreted") for r in table):
        lines += ["", "Rows marked (interpreter) ran the Triton kernel in Triton's CPU "
                  "interpreter: a correctness and plumbing check (its loss equals the torch "
                  "row's), not a speed."]
    for vocab in dict.fromkeys(r["vocab"] for r in table):
        checks = lattice_checks([r for r in table if r["vocab"] == vocab], args)
        lines += [""] + [f"Check at V={vocab}: {line}." for line, _ in checks] if checks else []
    by_key = {(r["vocab"], r["method"]): r for r in table}
    goals = (("pruned", "full", 3), ("pruned_tdt", "tdt", 10))  # (row, reference, x faster)
    for name, ref_name, factor in goals:
        row, ref = by_key.get((500, name), {}), by_key.get((500, ref_name), {})
        if "seconds" in row and "seconds" in ref:
            speed = ref["seconds"] / row["seconds"]
            memory = ref["peak_mb"] / max(row["peak_mb"], 1e-9)
            verdict = "met" if speed >= factor and memory >= 5 else "NOT met"
            lines += ["", f"Goal at V=500 ({name} >= {factor}x faster and >= 5x less memory than "
                      f"{ref_name}): {verdict} ({speed:.2f}x faster, {memory:.2f}x less memory)."]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "\n".join(lines) + "\n")  # a stop mid-write keeps the last table

if __name__ == "__main__":
    raise SystemExit(main())
