"""Real-time factor of our PyTorch runtime against sherpa-onnx (fp32 and int8) on one model.

One table, one run, the same package and audio for every engine:

* ``pytorch``: :class:`asr.runtime.offline.Transcriber` (offline) and its streaming recognizer,
  with sherpa-onnx's search (greedy, one symbol per frame);
* ``sherpa-onnx fp32`` / ``int8``: the graphs of ``asr export-onnx`` (offline, and streaming when
  the package streams) in sherpa-onnx (:mod:`asr.export.sherpa_decode`), greedy search.

For each engine, mode (offline / streaming) and thread count (torch intra-op threads, or
onnxruntime's ``num_threads``): RTF = wall time / seconds of audio (lower is faster), the median
of ``--repeat`` runs after an untimed warm-up run (:func:`tools.bench._timing.median_seconds`, as
every bench times its repeats), for **one stream** (the files decoded one after another) and for
**a batch** (``--batch-size`` files decoded together: one batched forward offline, concurrent
streams in one ``decode`` / ``decode_streams`` loop when streaming). The last lines compare
sherpa-onnx int8 streaming with our PyTorch streaming, for one stream and for a batch at each
thread count.

Every row times the same thing: decoding, not construction. Each engine's recognizer (our loaded
model and its streaming recognizer; sherpa-onnx's, built per thread count) is made before its
timed runs, as a server or a batch job makes it once; each run makes its streams (per-utterance
state, as a server makes one per connection) and decodes every file.

Usage:
    .venv/bin/python tools/bench/onnx.py                       # tiny model trained here
    .venv/bin/python tools/bench/onnx.py --model PKG --files a.wav b.flac ...
    .venv/bin/python tools/bench/onnx.py --threads 1 2 --batch-size 8 --num-files 16

Without ``--model`` a tiny transducer is trained first (about 20 s on 2 CPU cores); without
``--files``, ``--num-files`` utterances are synthesized with espeak-ng (1-4 sentences each).
On a shared machine the numbers move with its load: compare rows of one run; the load average
(``/proc/loadavg``) before and after is printed with the table.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

# Run as a script, this file's folder comes first on sys.path, and this file would then be
# what `import onnx` finds: drop the folder.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: this checkout's asr before any other on the path

from tools.bench._args import COUNT  # noqa: E402
from tools.bench._speech import synthesize_utterances  # noqa: E402
from tools.bench._timing import median_seconds  # noqa: E402

logger = logging.getLogger("bench.onnx")


def _rtf(run: Callable[[], object], repeat: int, seconds: float) -> float:
    """Median RTF of ``repeat`` runs over ``seconds`` of audio, after one untimed run (the first
    call of an engine pays for one-time allocation and graph set-up): the median of
    :func:`tools.bench._timing.median_seconds`, as every bench times its repeats."""
    return median_seconds(run, repeat) / seconds


def _decode_streams(recognizer, waves: list[np.ndarray], rate: int, size: int) -> None:
    """Decodes ``waves`` with our streaming ``recognizer``, ``size`` concurrent streams at a time
    (as sherpa-onnx's ``decode_streams`` loop does): new streams, the whole audio of each, then
    chunk steps of the group until every stream is done."""
    for start in range(0, len(waves), size):
        group = [recognizer.new_stream() for _ in waves[start: start + size]]
        for stream, wave in zip(group, waves[start: start + size]):
            recognizer.accept_waveform(stream, wave, rate)
            recognizer.input_finished(stream)
        while not all(s.done for s in group):
            recognizer.decode(group)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model package (default: train a tiny one)")
    parser.add_argument("--files", nargs="+", type=Path, help="audio files (default: synthesize)")
    parser.add_argument("--num-files", type=COUNT, default=16)
    parser.add_argument("--batch-size", type=COUNT, default=8)
    parser.add_argument("--threads", type=COUNT, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=COUNT, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the exports (and the tiny model) go, kept (default: a temp "
                             "dir, removed at the end)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        return _run(args, args.work_dir)
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, work: Path) -> int:
    """The bench of :func:`main`'s ``args``, its exports (and tiny model, audio) in ``work``."""
    from asr.audio import load_audio
    from asr.export import export_onnx
    from asr.export.sherpa_decode import load_recognizer
    from asr.runtime.endpoint import EndpointConfig
    from asr.runtime.offline import load_model

    package = args.model
    if package is None:
        from asr.testing.packages import trained_tiny_package

        logger.info("training a tiny transducer under %s", work)
        package = trained_tiny_package(work / "tiny", head="transducer").package_dir
    files = args.files or synthesize_utterances(work / "audio", args.num_files, args.seed)
    # sherpa-onnx's search: greedy, at most one symbol per frame, no blank penalty (not the
    # package's own searcher, which may be a beam search with an LM)
    model = load_model(package, searcher="greedy",
                       search={"max_symbols_per_frame": 1, "blank_penalty": 0.0})
    rate = model.sample_rate
    waves = [load_audio(f, rate) for f in files]
    seconds = sum(w.shape[0] for w in waves) / rate
    streams = model.runtime.package.metadata.streaming
    exports = {"offline": work / "onnx"}
    export_onnx(package, exports["offline"], int8=True, force=True)
    if streams:
        exports["streaming"] = work / "onnx-streaming"
        export_onnx(package, exports["streaming"], streaming=True, int8=True, force=True)
    logger.info("%d files, %.1f s of audio; package %s", len(waves), seconds, package)

    batch = args.batch_size
    load_before = _load()
    # Every engine's recognizer is built before the timed runs (sherpa-onnx's per thread count,
    # its num_threads being an option of the constructor); each timed run makes its own streams.
    ours = {"offline": lambda size: model.transcribe(waves, batch_size=size)}
    if streams:
        recognizer = model.streaming_recognizer(endpoint=EndpointConfig(enabled=False))
        ours["streaming"] = lambda size: _decode_streams(recognizer, waves, rate, size)
    rows: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for mode, decode in ours.items():
            one = _rtf(lambda d=decode: d(1), args.repeat, seconds)
            many = _rtf(lambda d=decode: d(batch), args.repeat, seconds)
            rows.setdefault(("pytorch", mode), {})[threads] = (one, many)
            for int8 in (False, True):
                sherpa = load_recognizer(exports[mode], int8=int8, num_threads=threads)
                one = _rtf(lambda r=sherpa: r.decode(waves, batch_size=1), args.repeat, seconds)
                many = _rtf(lambda r=sherpa: r.decode(waves, batch_size=batch), args.repeat,
                            seconds)
                engine = "sherpa-onnx int8" if int8 else "sherpa-onnx fp32"
                rows.setdefault((engine, mode), {})[threads] = (one, many)

    header = "| engine | mode | " + " | ".join(
        f"{t} thread{'s' if t > 1 else ''}: 1 stream | {t}: batch {batch}" for t in args.threads)
    print(f"\nRTF (wall / audio; lower is faster), median of {args.repeat} runs after a warm-up "
          f"run, recognizers built before (not timed), streams made in each run; {len(waves)} "
          f"files, {seconds:.1f} s of audio; package {package}; "
          f"{len(os.sched_getaffinity(0))} CPU cores, load average {load_before} before, "
          f"{_load()} after\n")
    print(header + " |")
    print("|---|---|" + "---|---|" * len(args.threads))
    for (engine, mode), by_threads in rows.items():
        cells = " | ".join(f"{one:.4f} | {many:.4f}"
                           for one, many in (by_threads[t] for t in args.threads))
        print(f"| {engine} | {mode} | {cells} |")
    if streams:
        for t in args.threads:
            for size, name in ((0, "1 stream"), (1, f"batch {batch}")):
                ours_rtf = rows[("pytorch", "streaming")][t][size]
                int8_rtf = rows[("sherpa-onnx int8", "streaming")][t][size]
                print(f"streaming, {name}, {t} thread(s): sherpa-onnx int8 is "
                      f"{ours_rtf / int8_rtf:.1f}x as fast as our PyTorch runtime (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
