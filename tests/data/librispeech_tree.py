"""Helpers of the data tests: tiny LibriSpeech-layout corpora (soundfile; no downloads, no TTS)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Utt:
    utt_id: str
    text: str
    num_samples: int


# part -> {(speaker, chapter): [(duration in seconds, text), ...]}
TREE = {
    "train-clean-5": {
        ("1001", "10"): [(0.6, "HELLO WORLD"), (1.3, "A B C"), (0.9, "GOOD MORNING"),
                         (2.1, "THE QUICK BROWN FOX")],
        ("1002", "20"): [(1.1, "ONE TWO THREE"), (0.75, "YES"), (1.6, "NO WAY HOME"),
                         (1.25, "SPEECH RECOGNITION")],
    },
    "dev-clean-2": {
        ("2001", "30"): [(0.8, "TEST ONE"), (1.45, "TEST TWO IS LONGER"), (1.0, "LAST")],
    },
}


def write_part(corpus_dir: Path, part: str, spec: dict, seed: int = 0) -> list[Utt]:
    """Writes flac files (tones + noise) and .trans.txt files of one part; returns utterances."""
    rng = np.random.default_rng(seed)
    utts = []
    for (speaker, chapter), entries in spec.items():
        chapter_dir = corpus_dir / part / speaker / chapter
        chapter_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for i, (duration, text) in enumerate(entries):
            utt_id = f"{speaker}-{chapter}-{i:04d}"
            n = int(round(duration * SAMPLE_RATE))
            t = np.arange(n) / SAMPLE_RATE
            freq = rng.uniform(150, 900)
            wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(n)
            sf.write(chapter_dir / f"{utt_id}.flac", wave.astype(np.float32), SAMPLE_RATE,
                     subtype="PCM_16")
            lines.append(f"{utt_id} {text}\n")
            utts.append(Utt(utt_id, text, n))
        (chapter_dir / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return utts


def write_tree(corpus_dir: Path) -> dict[str, list[Utt]]:
    return {part: write_part(corpus_dir, part, spec, seed=k) for k, (part, spec) in
            enumerate(TREE.items())}


class CharEncoder:
    """Trivial tokenizer: 'A'..'Z' -> 1..26, space -> 27, anything else -> 28."""

    def encode(self, text: str) -> list[int]:
        return [27 if c == " " else (ord(c) - 64 if "A" <= c <= "Z" else 28) for c in text]


