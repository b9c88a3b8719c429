"""The benches' speech when no audio files are given: utterances spoken by espeak-ng."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def synthesize_utterances(out_dir: Path, num_files: int, seed: int) -> list[Path]:
    """``num_files`` wav files ``out_dir/benchNNN.wav``, each 1-4 sentences of
    :data:`asr.testing.tiny.TINY_SENTENCES` at 140-189 words per minute, drawn with ``seed``.

    Needs the ``espeak-ng`` program (:func:`asr.testing.tiny.synthesize`).
    """
    from asr.testing.tiny import TINY_SENTENCES, synthesize  # the bench's checkout, on sys.path

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(num_files):
        picks = rng.integers(len(TINY_SENTENCES), size=int(rng.integers(1, 5)))
        text = " ".join(TINY_SENTENCES[int(j)] for j in picks)
        speed = int(rng.integers(140, 190))
        paths.append(synthesize(text, out_dir / f"bench{i:03d}.wav", speed=speed))
    return paths
