"""Benchmark: the websocket server under 1, 4, 8 and 16 concurrent real-time streams.

What is measured. ``asr serve`` runs as a separate process on 127.0.0.1 (``--port 0``); this
process runs N clients concurrently, each sending ``--seconds`` of speech (espeak-ng sentences
separated by short pauses, 16 kHz float32) in ``--chunk-seconds`` messages paced at the speed of
speech, start times staggered over one chunk. For every result message:

* latency = its arrival time - the time the client sent the chunk that completed the audio the
  result covers (the server reports that position as ``audio_end``, in seconds of the stream):
  the delay from the end of a chunk's audio to its partial result, as a user sees it (it
  includes waiting for the model's chunk to fill up only when a message completes a chunk, so
  it measures server-side queueing + batching + compute + websocket transport);
* RTF = the server's decode-loop busy time (feature extraction, encoder, search) / the seconds of
  audio it received during the run, read from the server's ``/stats`` page before and after.

Bounded: 4 runs of about ``--seconds`` + 2 s each, every client under a timeout.

Usage:
    python tools/bench/serve.py                      # trains a tiny model first (~20 s)
                                                     # (with --model: only speaks the sentences)
    python tools/bench/serve.py --model PKG --streams 1 4 8 16 --seconds 8
    python tools/bench/serve.py --model PKG --searcher greedy     # or beam (the streaming beam)
    python tools/bench/serve.py --engine sherpa-onnx --model ONNX_DIR [--int8]   # asr export-onnx
                                                                                # --streaming
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: this checkout's asr before any other on the path

from asr.testing.serving import start_server_process, stop_process  # noqa: E402
from tools.bench._args import NON_NEGATIVE_INT, POSITIVE, bounded  # noqa: E402

logger = logging.getLogger("bench.serve")
#: why --streams and --seconds have an upper bound
BOUNDED = "a bounded benchmark"

def speech_wavs(model: Path | None, work_dir: Path) -> tuple[Path, list[Path]]:
    """The package to serve and the benchmark's speech: without ``model``, the tiny test model
    trained under ``work_dir`` and its training recordings; with one, only the same sentences
    spoken by espeak-ng (no model is trained that would not be served)."""
    if model is None:
        from asr.testing.packages import trained_tiny_package

        tiny = trained_tiny_package(work_dir)
        return tiny.package_dir, list(tiny.wavs)
    from asr.testing.tiny import TINY_SENTENCES, synthesize

    wavs = [synthesize(text, work_dir / "speech" / f"utt{i}.wav")
            for i, text in enumerate(TINY_SENTENCES)]
    return model, wavs


def speech_audio(package_wavs: list[Path], seconds: float) -> np.ndarray:
    """(N,) 16 kHz: the wavs with 0.4 s pauses, repeated to ``seconds``."""
    from asr.audio import load_audio

    pause = np.zeros(6400, np.float32)
    pieces = [np.concatenate([load_audio(w, 16000), pause]) for w in package_wavs]
    one = np.concatenate(pieces)
    reps = int(np.ceil(seconds * 16000 / one.size))
    return np.tile(one, reps)[: int(seconds * 16000)]


def start_server(
    model: Path, threads: int, max_connections: int, *extra: str
) -> tuple[subprocess.Popen, int]:
    return start_server_process(
        model, "--max-connections", str(max_connections), "--idle-timeout", "30",
        "--num-threads", str(threads), *extra, timeout=120,
    )


def read_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as response:
        return json.load(response)


def latencies(result) -> list[float]:
    """Seconds from sending the chunk that completed each result's audio to its arrival."""
    out = []
    sends = result.send_times
    for msg in result.messages:
        if "audio_end" not in msg:
            continue
        end = msg["audio_end"] - 1e-3  # audio_end is rounded to ms
        sent = next((t for t, position in sends if position >= end), None)
        if sent is not None:
            out.append(msg["received"] - sent)
    return out


async def run_clients(
    url: str, audio: np.ndarray, count: int, chunk_seconds: float, timeout: float
) -> list:
    from asr.serve.client import stream_samples

    async def one(index: int):
        await asyncio.sleep(index * chunk_seconds / count)
        return await stream_samples(
            url, audio, 16000, chunk_seconds=chunk_seconds, realtime=True, timeout=timeout
        )

    return await asyncio.gather(*(one(i) for i in range(count)))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model package (default: train the tiny test model)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/asr_bench_serve"),
        help="where the tiny model is trained, or with --model the speech is synthesized "
        "(default: /tmp/asr_bench_serve)",
    )
    parser.add_argument("--streams", type=bounded(int, at_least=1, at_most=64, why=BOUNDED),
                        nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=bounded(float, above=0, at_most=60, why=BOUNDED),
                        default=6.0, help="audio per stream (default: 6)")
    parser.add_argument(
        "--chunk-seconds", type=POSITIVE, default=0.1,
        help="audio per client message (default: 0.1)"
    )
    parser.add_argument(
        "--threads",
        type=NON_NEGATIVE_INT,
        default=1,
        help="server torch threads (0: torch's default; default: 1)",
    )
    parser.add_argument("--engine", choices=("pytorch", "sherpa-onnx"), default="pytorch",
                        help="asr serve --engine (sherpa-onnx: --model is an export-onnx dir)")
    parser.add_argument("--int8", action="store_true", help="sherpa-onnx: the int8 graphs")
    parser.add_argument("--searcher", default=None,
                        help="asr serve --searcher (pytorch: e.g. greedy or beam; default: the "
                        "package's if it streams)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    if args.engine != "pytorch" and args.model is None:
        parser.error("--engine sherpa-onnx needs --model ONNX_DIR (asr export-onnx --streaming)")
    model, wavs = speech_wavs(args.model, args.work_dir)
    audio = speech_audio(wavs, args.seconds)
    extra = ["--engine", args.engine] + (["--int8"] if args.int8 else [])
    extra += ["--searcher", args.searcher] if args.searcher else []
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    # the server process (python -m asr.cli.main) runs this checkout's asr too, from any folder
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    proc, port = start_server(model, args.threads, max(args.streams) + 1, *extra)
    url = f"ws://127.0.0.1:{port}"
    rows = []
    try:
        asyncio.run(run_clients(url, audio[:48000], 2, args.chunk_seconds, 30))  # warm-up
        for count in args.streams:
            before = read_stats(port)
            start = time.monotonic()
            results = asyncio.run(
                run_clients(url, audio, count, args.chunk_seconds, args.seconds * 3 + 30)
            )
            wall = time.monotonic() - start
            after = read_stats(port)
            busy = after["busy_seconds"] - before["busy_seconds"]
            seconds = after["audio_seconds"] - before["audio_seconds"]
            steps = max(1, after["steps"] - before["steps"])
            batch = (after["streams_decoded"] - before["streams_decoded"]) / steps
            lat = [x for r in results for x in latencies(r)]
            bad = sum(1 for r in results if r.close_code != 1000 or r.errors)
            rows.append(
                (
                    count,
                    seconds,
                    wall,
                    busy / seconds if seconds else float("nan"),
                    batch,
                    statistics.median(lat) * 1000 if lat else float("nan"),
                    percentile(lat, 95) * 1000,
                    len(lat),
                    bad,
                )
            )
    finally:
        stop_process(proc, timeout=30)
    cores = len(os.sched_getaffinity(0))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nasr serve --engine {args.engine}{' --int8' if args.int8 else ''} on 127.0.0.1, "
        f"model {model}, {cores} CPU cores (load average {load_before} before, {load} after), "
        f"{args.seconds:g} s per stream in {args.chunk_seconds * 1000:g} ms messages, real time"
    )
    print(
        f"{'streams':>7} {'audio s':>8} {'wall s':>7} {'RTF':>7} {'batch':>6} "
        f"{'lat p50 ms':>10} {'lat p95 ms':>10} {'results':>8} {'failed':>6}"
    )
    for count, seconds, wall, rtf, batch, p50, p95, n, bad in rows:
        print(
            f"{count:>7} {seconds:>8.1f} {wall:>7.1f} {rtf:>7.4f} {batch:>6.2f} "
            f"{p50:>10.1f} {p95:>10.1f} {n:>8} {bad:>6}"
        )
    failed = sum(row[-1] for row in rows)
    if failed:  # the figures above leave those streams out: not a clean measurement
        print(f"serve bench: {failed} stream(s) failed (no final result or an error reply)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
