"""Offline transcription throughput: batched vs one file at a time (and streaming, optionally).

Prints seconds of audio transcribed per second of wall time (higher is better) for
``Transcriber.transcribe`` with ``batch_size=1`` and with ``--batch-size``, on the same files:
the median of ``--repeat`` runs after an untimed warm-up, as every bench times its repeats.

Usage:
    .venv/bin/python tools/bench/transcribe.py                      # tiny model trained here
    .venv/bin/python tools/bench/transcribe.py --model PKG --files a.wav b.flac ...
    .venv/bin/python tools/bench/transcribe.py --num-files 32 --batch-size 16 --streaming

Without ``--files``, ``--num-files`` utterances are synthesized with espeak-ng (1-4 sentences
each). Without ``--model``, a tiny CTC model is trained first (about 10-20 s on 2 CPU cores);
its speed is what a tiny model costs, the ratio batched / one-at-a-time is the point.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: this checkout's asr before any other on the path

from tools.bench._args import COUNT  # noqa: E402
from tools.bench._speech import synthesize_utterances  # noqa: E402
from tools.bench._timing import median_seconds  # noqa: E402

logger = logging.getLogger("bench.transcribe")


def _measure(model, audios, repeat: int, **kwargs) -> float:
    """Median wall time of ``repeat`` transcribe() calls over ``audios``
    (:func:`tools.bench._timing.median_seconds`), after an untimed call on two of them with the
    same options (the first call of a mode pays for one-time set-up and allocation)."""
    return median_seconds(lambda: model.transcribe(audios, **kwargs), repeat,
                          warm_up=lambda: model.transcribe(audios[:2], **kwargs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model package (default: train a tiny one)")
    parser.add_argument("--files", nargs="*", help="audio files (default: synthesized)")
    parser.add_argument("--num-files", type=COUNT, default=24)
    parser.add_argument("--batch-size", type=COUNT, default=8)
    parser.add_argument("--repeat", type=COUNT, default=2,
                        help="timed runs per mode (the median is reported)")
    parser.add_argument("--threads", type=COUNT, default=1,
                        help="torch intra-op threads (1: stable timings on a shared machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--streaming", action="store_true", help="also time --streaming decoding")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    from asr.audio import decode_audio
    from asr.runtime.offline import load_model

    with tempfile.TemporaryDirectory(prefix="bench_transcribe_") as tmp:
        work = Path(tmp)
        package = args.model
        if package is None:
            from asr.testing.packages import trained_tiny_package

            print("training a tiny CTC model ...", file=sys.stderr)
            package = trained_tiny_package(work).package_dir
        files = args.files or synthesize_utterances(work / "audio", args.num_files, args.seed)
        model = load_model(package, device=args.device)
        audios = [decode_audio(f, model.sample_rate).samples for f in files]
        total = sum(a.shape[0] for a in audios) / model.sample_rate
        rows = [("one file at a time (batch 1)",
                 _measure(model, audios, args.repeat, batch_size=1)),
                (f"batched (batch {args.batch_size})",
                 _measure(model, audios, args.repeat, batch_size=args.batch_size))]
        if args.streaming:
            for batch in (1, args.batch_size):
                rows.append((f"streaming, {batch} stream(s) at a time",
                             _measure(model, audios, args.repeat, batch_size=batch,
                                      streaming=True)))
    print(f"model {package}: {len(audios)} files, {total:.1f} s of audio, device {args.device}, "
          f"{args.threads} thread(s); wall s: median of {args.repeat} run(s) after a warm-up")
    print(f"{'mode':<36} {'wall s':>8} {'audio s / s':>12} {'speed-up':>9}")
    for name, seconds in rows:
        print(f"{name:<36} {seconds:8.2f} {total / seconds:12.1f} {rows[0][1] / seconds:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
