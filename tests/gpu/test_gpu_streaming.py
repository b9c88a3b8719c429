"""The streaming encoder on the device under test: chunk by chunk == the full forward under the
same chunk mask, and the device == the CPU.

The recipe encoder (Conformer M preset on CUDA, the tiny preset in the dry run) with its own
chunking (``chunk_size``, ``left_chunks``), fed ``frames_needed`` frames per call, three streams
of different lengths in one batch. float64 must agree to rounding; float32 (TF32 off) is compared
against the float64 result, as accurate as the full forward in float32 is.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from gpu_helpers import PRESETS, assert_as_accurate, assert_scaled_close

from asr.config import load_config
from asr.encoders import EncoderConfig, build_encoder

pytestmark = pytest.mark.gpu

FEAT_DIM = 80


def _encoder(full_size: bool):
    name = "encoder_m.yaml" if full_size else "encoder_tiny.yaml"
    cfg = load_config(EncoderConfig, PRESETS / name)
    torch.manual_seed(0)
    return build_encoder(dataclasses.replace(cfg, dropout=0.0), FEAT_DIM).eval(), cfg


def _stream(encoder, feats, lens, chunk_size, left_chunks):
    """Feeds every stream ``frames_needed`` frames per call; returns each stream's output."""
    batch = feats.shape[0]
    state = encoder.init_state(batch, feats.device, feats.dtype, left_chunks=left_chunks,
                               chunk_size=chunk_size)
    pos = torch.zeros(batch, dtype=torch.long, device=feats.device)
    outs = [[] for _ in range(batch)]
    while bool((pos < lens).any()):
        count = torch.minimum(encoder.frames_needed(state, chunk_size), lens - pos).clamp(min=0)
        width = max(int(count.max()), 1)
        index = (pos[:, None] + torch.arange(width, device=feats.device)[None])
        index = index.clamp(max=feats.shape[1] - 1)
        chunk = feats.gather(1, index[:, :, None].expand(-1, -1, feats.shape[2]))
        chunk = chunk * (torch.arange(width, device=feats.device)[None] < count[:, None])[..., None]
        out, out_lens, state = encoder.forward_chunk(chunk, count, state)
        for b in range(batch):
            outs[b].append(out[b, : out_lens[b]])
        pos += count
    return [torch.cat(o) for o in outs]


@torch.inference_mode()
def test_streaming_equals_full_forward_and_cpu(device, full_size, ieee_float32, record):
    encoder, cfg = _encoder(full_size)
    lens = torch.tensor([250, 160, 70] if full_size else [93, 58, 20])
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(len(lens), int(lens.max()), FEAT_DIM, generator=gen, dtype=torch.float64)
    feats *= (torch.arange(feats.shape[1])[None] < lens[:, None])[:, :, None]
    chunking = dict(chunk_size=cfg.chunk_size, left_chunks=cfg.left_chunks)

    def run(dev, dtype, stream: bool):
        model = encoder.to(dev, dtype)
        x, x_lens = feats.to(dev, dtype), lens.to(dev)
        full, full_lens = model(x, x_lens, **chunking)
        full = torch.cat([full[b, :n] for b, n in enumerate(full_lens.tolist())])
        if not stream:
            return full, None
        pieces = _stream(model, x, x_lens, cfg.chunk_size, cfg.left_chunks)
        assert [p.shape[0] for p in pieces] == full_lens.tolist()
        return full, torch.cat(pieces)

    ref64, _ = run("cpu", torch.float64, stream=False)
    ref32, _ = run("cpu", torch.float32, stream=False)
    full64, stream64 = run(device, torch.float64, stream=True)
    full32, stream32 = run(device, torch.float32, stream=True)
    diffs = {
        "stream_vs_full_f64": assert_scaled_close(stream64, full64, 1e-9, "streaming f64"),
        "device_vs_cpu_f64": assert_scaled_close(full64, ref64, 1e-9, "device vs cpu f64"),
        "full_f32": assert_as_accurate(full32, ref32, ref64, "full f32"),
        "stream_f32": assert_as_accurate(stream32, ref32, ref64, "streaming f32"),
    }
    record(preset="m" if full_size else "tiny", **diffs)
