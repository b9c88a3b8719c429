"""A deterministic pseudo-English corpus of LibriSpeech-style (upper-case) sentences."""

from __future__ import annotations

import random

import pytest

_SYLLABLES = (
    "THE AN OF TO IN ING ER ED ON RE AT ST EN ND TH HE LY OR AR AL IT IS ES "
    "QU X Z J K V W Y B C D F G H M N P S T 'S N'T 'LL"
).split()


def make_sentences(num_sentences: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = sorted({
        "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(1500)
    })
    words = [w for w in words if not w.startswith("'")]
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(2, 14))) for _ in range(num_sentences)
    ]


@pytest.fixture(scope="session")
def train_texts() -> list[str]:
    return make_sentences(1500, seed=1)


@pytest.fixture(scope="session")
def heldout_texts() -> list[str]:
    return make_sentences(50, seed=2)
