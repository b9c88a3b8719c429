"""Synthetic training batches shaped like LibriSpeech, for benchmarks and the GPU check.

No data or lhotse is needed: features are random (B, T, 80) log-mel-like tensors at 100 frames
per second and tokens random BPE ids, so what these batches measure is compute and memory.

Durations: :func:`librispeech_durations` draws from a mixture that approximates the utterance
lengths of LibriSpeech train-960 (281k utterances, 961 h: mean 12.3 s, most utterances 10-17 s,
a tail of short ones, cut at ``data.max_cut_duration``): 72 % normal(14.5 s, 1.7 s) clipped to
[10, 17.5], 25 % uniform [1, 10] s and 3 % uniform [17.5, 20] s (mean ~12.4 s). It is a stand-in
for the real distribution, close enough for batch shapes, not a statistic of the corpus.

Batching: :func:`bucketed_batches` does what the training sampler does (lhotse's dynamic
bucketing, :mod:`asr.data.sampler`): durations go to ``num_buckets`` buckets holding equal total
duration, and each batch is filled from one bucket up to ``max_duration`` seconds.

Tokens: ``tokens_per_second`` (3.5 by default: read English at ~2.7 words/s and ~1.3 BPE-500
tokens per word) ids in ``[2, vocab)`` (0 is blank, 1 ``<sos/eos>``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from asr.types import Batch

__all__ = [
    "FRAMES_PER_SECOND",
    "bucketed_batches",
    "librispeech_durations",
    "shrink_experiment",
    "synthetic_batch",
    "worst_case_durations",
]

FRAMES_PER_SECOND = 100


def librispeech_durations(
    count: int, generator: torch.Generator, max_cut_duration: float = 20.0
) -> list[float]:
    """``count`` utterance durations (seconds) shaped like LibriSpeech train-960 (module doc)."""
    kind = torch.rand(count, generator=generator)
    main = (14.5 + 1.7 * torch.randn(count, generator=generator)).clamp(10.0, 17.5)
    short = 1.0 + 9.0 * torch.rand(count, generator=generator)
    long = 17.5 + 2.5 * torch.rand(count, generator=generator)
    durations = torch.where(kind < 0.72, main, torch.where(kind < 0.97, short, long))
    return [round(float(d), 2) for d in durations.clamp(max=max_cut_duration)]


def bucketed_batches(
    durations: Sequence[float], max_duration: float, num_buckets: int, generator: torch.Generator
) -> list[list[float]]:
    """Batches of durations as the dynamic-bucketing sampler forms them, in random order.

    The durations are sorted into ``num_buckets`` buckets of about equal total duration, each
    bucket is shuffled and cut into batches whose sum stays within ``max_duration`` (a batch
    always holds at least one utterance), and the batches of all buckets are shuffled.
    """
    ordered = sorted(durations)
    total = sum(ordered)
    buckets: list[list[float]] = [[] for _ in range(max(1, num_buckets))]
    running = 0.0
    for duration in ordered:
        index = min(int(running / total * len(buckets)), len(buckets) - 1) if total else 0
        buckets[index].append(duration)
        running += duration
    batches: list[list[float]] = []
    for bucket in buckets:
        order = torch.randperm(len(bucket), generator=generator).tolist()
        current: list[float] = []
        for i in order:
            if current and sum(current) + bucket[i] > max_duration:
                batches.append(current)
                current = []
            current.append(bucket[i])
        if current:
            batches.append(current)
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def worst_case_durations(max_duration: float, max_cut_duration: float) -> list[float]:
    """The batch that needs the most memory at ``max_duration``: as many utterances of the
    longest allowed duration as fit (attention memory grows with the utterance length, so a
    full batch of the longest cuts is the peak; at least one utterance)."""
    count = max(1, math.floor(max_duration / max_cut_duration + 1e-9))
    return [max_cut_duration] * count


def synthetic_batch(
    durations: Sequence[float],
    vocab_size: int,
    generator: torch.Generator,
    feat_dim: int = 80,
    tokens_per_second: float = 3.5,
) -> Batch:
    """A :class:`Batch` of random features and tokens for utterances of ``durations`` seconds."""
    frames = torch.tensor([max(1, round(d * FRAMES_PER_SECOND)) for d in durations])
    token_lens = torch.tensor([max(1, round(d * tokens_per_second)) for d in durations])
    feats = torch.randn(len(durations), int(frames.max()), feat_dim, generator=generator)
    feats *= (torch.arange(feats.shape[1])[None, :] < frames[:, None])[:, :, None]
    width = int(token_lens.max())
    tokens = torch.randint(2, vocab_size, (len(durations), width), generator=generator)
    tokens *= torch.arange(width)[None, :] < token_lens[:, None]
    return Batch(
        feats=feats,
        feat_lens=frames,
        tokens=tokens,
        token_lens=token_lens,
        cut_ids=[f"synthetic-{i}" for i in range(len(durations))],
    )


def shrink_experiment(cfg, dim: int = 32):
    """The same experiment (heads, losses, options) with a 1-layer ``dim``-wide encoder and
    1-layer heads of width ``dim``: what a dry run on the CPU trains instead of the recipe."""
    encoder = dataclasses.replace(
        cfg.encoder, num_layers=1, d_model=dim, num_heads=2, ff_dim=2 * dim,
        subsampling_channels=8, conv_kernel_size=min(cfg.encoder.conv_kernel_size, 7),
    )
    small = {}
    for name, head in cfg.heads.enabled().items():
        fields = {f.name for f in dataclasses.fields(head)}
        changes = {"d_model": dim, "num_heads": 2, "num_layers": 1, "ffn_dim": 2 * dim,
                   "pred_dim": dim, "joiner_dim": dim}
        small[name] = dataclasses.replace(
            head, **{k: v for k, v in changes.items() if k in fields}
        )
    return dataclasses.replace(
        cfg, encoder=encoder, heads=dataclasses.replace(cfg.heads, **small)
    )
