"""Corpus parts of the synthetic LibriSpeech: names, roles and acoustic conditions.

A part's *role* decides its voices and sentences (see :mod:`asr.synth.synthesize`): ``test`` parts
use only held-out voices; ``train`` and ``dev`` parts only the others; sentences of all parts are
disjoint. ``*-other`` parts get harsher acoustics (:data:`OTHER`), like LibriSpeech's "other"
subsets are harder than its "clean" ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["train", "dev", "test"]
ROLE_ORDER: dict[str, int] = {"test": 0, "dev": 1, "train": 2}


@dataclass(frozen=True)
class Acoustics:
    """Ranges (uniform) of the per-utterance variation of one part.

    ``speed``: when set, each utterance's rendering is also played faster or slower by a factor
    from this range (resampled, like sox ``speed``: tempo, pitch and formants move together),
    which the engines' own rate and pitch settings cannot do (they keep the vocal tract).
    """

    rate: tuple[float, float] = (0.88, 1.12)
    espeak_pitch: float = 12.0  # +- espeak-ng pitch units around the voice's base
    flite_semitones: float = 2.0  # +- semitones around the voice's base F0
    lead_s: tuple[float, float] = (0.1, 0.5)
    trail_s: tuple[float, float] = (0.1, 0.5)
    reverb_prob: float = 0.3
    rt60_s: tuple[float, float] = (0.15, 0.5)
    drr_db: tuple[float, float] = (3.0, 12.0)
    snr_db: tuple[float, float] = (15.0, 40.0)
    noise_color: tuple[float, float] = (-0.3, 0.95)
    peak_db: tuple[float, float] = (-6.0, -1.0)
    speed: tuple[float, float] | None = None


CLEAN = Acoustics()
# Training parts: clean, and every rendering speed-perturbed (0.9-1.1): the variation of
# LibriSpeech recipes' 0.9/1.1 copies, but one distinct segment per utterance instead of copies.
TRAIN_CLEAN = Acoustics(speed=(0.9, 1.1))
OTHER = Acoustics(
    rate=(0.8, 1.2), reverb_prob=0.8, rt60_s=(0.3, 0.9), drr_db=(-3.0, 6.0), snr_db=(5.0, 20.0)
)


@dataclass(frozen=True)
class PartSpec:
    """What a part is for (which voices, where its sentences come from) and how it sounds."""

    role: Role
    code: int  # digit in chapter ids
    acoustics: Acoustics


PARTS: dict[str, PartSpec] = {
    "train-clean-5": PartSpec("train", 1, TRAIN_CLEAN),
    "train-clean-100": PartSpec("train", 2, TRAIN_CLEAN),
    "dev-clean-2": PartSpec("dev", 3, CLEAN),
    "dev-clean": PartSpec("dev", 4, CLEAN),
    "dev-other": PartSpec("dev", 5, OTHER),
    "test-clean": PartSpec("test", 6, CLEAN),
    "test-other": PartSpec("test", 7, OTHER),
    # the contextual-biasing set (asr.synth.biasing): held-out voices, its own sentences
    "dev-biasing": PartSpec("test", 8, CLEAN),
    "test-biasing": PartSpec("test", 9, CLEAN),
}

#: Parts made only by :func:`asr.synth.synthesize.synthesize_biasing_set` (their sentences carry
#: rare phrases), not by the corpus synthesis.
BIASING_PARTS: tuple[str, ...] = ("dev-biasing", "test-biasing")
