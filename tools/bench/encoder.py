"""Encoder benchmark: parameters, offline speed and streaming real-time factor per preset.

Runs on the CPU of this machine (or ``--device``) with random weights and random 80-bin features
(100 frames per second of audio). For each preset in ``recipes/presets/encoder_<name>.yaml`` it
prints:

* encoder parameters, and the total with an estimated vocab-500 transducer head (512-dim joiner
  plus a stateless predictor: embedding + depthwise context-2 convolution);
* offline: milliseconds of full-sequence ``forward`` per second of audio (batch 1);
* streaming: real-time factor (compute time / audio time) of ``forward_chunk`` for each chunk
  size (batch 1, feeding ``frames_needed`` frames per call).

Times are the median of ``--repeats`` runs after an untimed warm-up run
(:func:`tools.bench._timing.median_seconds`, as every bench times its repeats).

Usage::

    python tools/bench/encoder.py                 # all presets, 8 s of audio, chunks 4 8 16 32
    python tools/bench/encoder.py --quick         # tiny and s, 4 s, chunks 8 16
    python tools/bench/encoder.py --presets s,m --chunk-sizes 8 16 --seconds 10
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: this checkout's asr before any other on the path

from asr.config import load_config  # noqa: E402
from asr.encoders import EncoderConfig, build_encoder  # noqa: E402
from tools.bench._args import COUNT, NON_NEGATIVE_INT, POSITIVE  # noqa: E402
from tools.bench._timing import device_sync, median_seconds  # noqa: E402

PRESET_DIR = ROOT / "recipes" / "presets"
FRAMES_PER_SECOND = 100
FEAT_DIM = 80


def transducer_head_params(enc_dim: int, vocab_size: int = 500, dim: int = 512) -> int:
    """Parameters of a joiner (enc/pred projections + output) and a stateless predictor."""
    predictor = vocab_size * dim + dim * 2 + dim
    joiner = (enc_dim * dim + dim) + (dim * dim + dim) + (dim * vocab_size + vocab_size)
    return predictor + joiner


def _stream_once(encoder, feats: torch.Tensor, chunk_size: int, left_chunks: int) -> None:
    state = encoder.init_state(1, feats.device, feats.dtype, left_chunks=left_chunks,
                               chunk_size=chunk_size)
    pos, total = 0, feats.shape[1]
    while pos < total:
        count = min(int(encoder.frames_needed(state, chunk_size)[0]), total - pos)
        _, _, state = encoder.forward_chunk(
            feats[:, pos : pos + count], torch.tensor([count], device=feats.device), state
        )
        pos += count


def bench_preset(name: str, seconds: float, chunk_sizes: list[int], repeats: int,
                 device: str) -> dict:
    cfg = load_config(EncoderConfig, PRESET_DIR / f"encoder_{name}.yaml")
    encoder = build_encoder(cfg, FEAT_DIM).to(device).eval()
    params = sum(p.numel() for p in encoder.parameters())
    frames = int(seconds * FRAMES_PER_SECOND)
    feats = torch.randn(1, frames, FEAT_DIM, device=device)
    lens = torch.tensor([frames], device=device)
    left_chunks = cfg.left_chunks  # < 0: unlimited, a cache that grows with the stream
    row = {"preset": name, "params": params,
           "with_head": params + transducer_head_params(cfg.d_model)}
    sync = device_sync(device)
    with torch.inference_mode():
        offline = median_seconds(lambda: encoder(feats, lens, chunk_size=0), repeats, sync)
        row["offline_ms_per_s"] = 1000.0 * offline / seconds
        for chunk in chunk_sizes:
            elapsed = median_seconds(lambda c=chunk: _stream_once(encoder, feats, c, left_chunks),
                             repeats, sync)
            row[f"rtf_{chunk}"] = elapsed / seconds
    return row


def _preset_names(text: str) -> list[str]:
    """argparse type of ``--presets``: comma-separated names, each with its YAML file."""
    names = text.split(",")
    known = sorted(p.stem.removeprefix("encoder_") for p in PRESET_DIR.glob("encoder_*.yaml"))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown preset(s) {', '.join(map(repr, unknown))} in {text!r}; "
            f"known: {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", type=_preset_names, default="tiny,s,m,l",
                        help="comma-separated preset names (recipes/presets/encoder_<name>.yaml)")
    parser.add_argument("--quick", action="store_true", help="tiny,s; 4 s; chunks 8 16; 1 repeat")
    parser.add_argument("--seconds", type=POSITIVE, default=8.0, help="audio length per run")
    parser.add_argument("--chunk-sizes", type=COUNT, nargs="+", default=[4, 8, 16, 32],
                        help="streaming chunk sizes in encoder frames (40 ms each)")
    parser.add_argument("--repeats", type=COUNT, default=2,
                        help="timed runs after a warm-up (the median is reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=NON_NEGATIVE_INT, default=0,
                        help="torch threads (0: default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    presets = args.presets
    if args.quick:
        presets, args.seconds, args.chunk_sizes, args.repeats = ["tiny", "s"], 4.0, [8, 16], 1
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    header = ["preset", "enc params", "+head", "offline ms/s"] + [
        f"RTF c={c} ({40 * c} ms)" for c in args.chunk_sizes
    ]
    rows = []
    for name in presets:
        logging.info("benchmarking preset %s", name)
        row = bench_preset(name, args.seconds, args.chunk_sizes, args.repeats, args.device)
        rows.append([name, f"{row['params'] / 1e6:.2f}M", f"{row['with_head'] / 1e6:.2f}M",
                     f"{row['offline_ms_per_s']:.1f}"]
                    + [f"{row[f'rtf_{c}']:.3f}" for c in args.chunk_sizes])
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    print(f"device={args.device} threads={torch.get_num_threads()} audio={args.seconds:g}s; "
          f"times: median of {args.repeats} run(s) after a warm-up")
    for r in [header] + rows:
        print(" | ".join(str(v).rjust(w) for v, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
