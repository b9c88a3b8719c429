"""TTS voices from Debian packages: espeak-ng (formant synthesis) and flite (diphone / clustergen).

A :class:`Voice` is one synthetic *speaker*: an engine, a voice name and a fixed base speaking rate
and pitch. Per utterance the caller varies rate and pitch around that base
(:func:`render` with ``rate_factor`` and ``pitch_offset``).

* espeak-ng (``apt-get install espeak-ng``): an English accent (``en-us``, ``en-gb``,
  ``en-gb-scotland``, ``en-gb-x-rp``, ``en-029``, ``en-us-nyc``, ``en-gb-x-gbclan``) combined with a
  voice variant (``+m1`` .. ``+m7`` male, ``+f1`` .. ``+f5`` female); rate ``-s`` in words per
  minute, pitch ``-p`` on espeak's 0-99 scale; 22.05 kHz output. MBROLA voices are not used (they
  need the separate ``mbrola`` packages).
* flite (``apt-get install flite``): ``kal`` (8 kHz diphone), ``kal16`` (16 kHz diphone) and the
  clustergen voices ``awb``, ``rms``, ``slt`` (16 kHz); rate through ``duration_stretch``, pitch
  through ``int_f0_target_mean`` in Hz. ``awb_time`` only speaks times and is not used.
  A clustergen voice with ``mlsa_alpha`` set is a new speaker made from it: its MLSA synthesis
  filter runs with another all-pass constant (the stock voices use 0.42), which warps the spectral
  envelope along frequency like a longer (larger alpha: formants move down) or shorter vocal tract.
  flite has no option for it, so :func:`render` dumps the voice (``flite -voicedump``), patches the
  constant in the dump and synthesizes from that file.

The engines ignore unknown voice names silently (falling back to a default voice), so
:func:`available_voices` checks names against the engines' own voice lists. All audio is returned
as float64 at 16 kHz (:data:`SAMPLE_RATE`), resampled (band-limited FFT interpolation) if needed.
"""

from __future__ import annotations

import atexit
import functools
import io
import logging
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf

from asr.synth.audio_effects import resample

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
Engine = Literal["espeak-ng", "flite"]


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker.

    Attributes:
        speaker_id: LibriSpeech-style numeric speaker id (unique per voice).
        engine: ``"espeak-ng"`` or ``"flite"``.
        name: engine voice name, e.g. ``"en-us+m3"`` (espeak-ng) or ``"slt"`` (flite).
        base_rate: espeak-ng words per minute; flite speed factor (1.0 = natural).
        base_pitch: espeak-ng pitch 0-99; flite target mean F0 in Hz.
        held_out: reserved for the test parts (never in train/dev).
        mlsa_alpha: flite clustergen voices only: the all-pass constant of the MLSA synthesis
            filter (None: the voice's own, 0.42 for awb / rms / slt); another value makes another
            speaker (formants lower for larger values).
    """

    speaker_id: int
    engine: Engine
    name: str
    base_rate: float
    base_pitch: float
    held_out: bool = False
    mlsa_alpha: float | None = None

    def __post_init__(self) -> None:
        if self.mlsa_alpha is not None:
            if self.engine != "flite" or self.name not in CLUSTERGEN:
                raise ValueError(
                    f"voice {self.speaker_id}: mlsa_alpha needs a flite clustergen voice "
                    f"({', '.join(sorted(CLUSTERGEN))}), got {self.engine}:{self.name}"
                )
            if not 0.0 < self.mlsa_alpha < 1.0:
                raise ValueError(
                    f"voice {self.speaker_id}: mlsa_alpha must be in (0, 1), got {self.mlsa_alpha}"
                )

    @property
    def sex(self) -> str:
        """``"M"`` or ``"F"`` (LibriSpeech's ``SPEAKERS.TXT`` column): an espeak-ng ``+fN``
        variant and flite ``slt`` are female; ``+mN``, no variant, and the other flite voices
        male."""
        if self.engine == "flite":
            return "F" if self.name == "slt" else "M"
        return "F" if "+f" in self.name else "M"

    @property
    def label(self) -> str:
        """``engine:name``, e.g. ``"flite:slt"``, or ``"flite:slt@0.48"`` with ``mlsa_alpha``."""
        suffix = "" if self.mlsa_alpha is None else f"@{self.mlsa_alpha:g}"
        return f"{self.engine}:{self.name}{suffix}"


CLUSTERGEN = frozenset({"awb", "rms", "slt"})


# 17 training voices and 3 held-out test voices. Each held-out espeak-ng voice combines an accent
# and a variant that training has seen separately, never together; flite rms is a clustergen male
# voice like awb. Four training speakers are awb and slt with another MLSA all-pass constant
# (formants ~10% higher or lower), so that training hears six clustergen vocal tracts, not two.
VOICES: tuple[Voice, ...] = (
    Voice(1001, "flite", "kal", 1.0, 100.0),
    Voice(1002, "flite", "kal16", 1.0, 118.0),
    Voice(1003, "flite", "awb", 1.0, 105.0),
    Voice(1004, "flite", "slt", 1.0, 175.0),
    Voice(1005, "espeak-ng", "en-us+m1", 165.0, 45.0),
    Voice(1006, "espeak-ng", "en-us+f2", 170.0, 55.0),
    Voice(1007, "espeak-ng", "en-gb+m3", 160.0, 40.0),
    Voice(1008, "espeak-ng", "en-gb+f1", 175.0, 60.0),
    Voice(1009, "espeak-ng", "en-gb-scotland+m4", 160.0, 50.0),
    Voice(1010, "espeak-ng", "en-gb-x-rp+f3", 170.0, 50.0),
    Voice(1011, "espeak-ng", "en-029+m2", 165.0, 45.0),
    Voice(1012, "espeak-ng", "en-us-nyc+f4", 175.0, 55.0),
    Voice(1013, "espeak-ng", "en-gb-x-gbclan+m5", 170.0, 40.0),
    Voice(1014, "flite", "awb", 1.0, 120.0, mlsa_alpha=0.38),
    Voice(1015, "flite", "awb", 1.0, 95.0, mlsa_alpha=0.46),
    Voice(1016, "flite", "slt", 1.0, 125.0, mlsa_alpha=0.47),
    Voice(1017, "flite", "slt", 1.0, 105.0, mlsa_alpha=0.50),
    Voice(9001, "flite", "rms", 1.0, 100.0, held_out=True),
    Voice(9002, "espeak-ng", "en-us+m3", 170.0, 50.0, held_out=True),
    Voice(9003, "espeak-ng", "en-gb+f2", 165.0, 55.0, held_out=True),
)


def _run(cmd: Sequence[str]) -> str:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=True).stdout


@functools.lru_cache(maxsize=1)
def _flite_voices() -> frozenset[str]:
    if shutil.which("flite") is None:
        return frozenset()
    out = _run(["flite", "-lv"])  # "Voices available: kal awb_time kal16 awb rms slt"
    return frozenset(out.split(":", 1)[-1].split())


@functools.lru_cache(maxsize=1)
def _espeak_voices() -> tuple[frozenset[str], frozenset[str]]:
    """(languages with a non-MBROLA voice, variant names)."""
    if shutil.which("espeak-ng") is None:
        return frozenset(), frozenset()
    languages = set()
    for line in _run(["espeak-ng", "--voices"]).splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5 and not parts[4].startswith("mb/"):
            languages.add(parts[1])
    variants = set(re.findall(r"!v/(\S+)", _run(["espeak-ng", "--voices=variant"])))
    return frozenset(languages), frozenset(variants)


# The end of a clustergen voice dump (flite 2.x ``cst_cg_dump_voice``): ... mlsa_alpha (f32),
# mlsa_beta (f32), multimodel, mixed_excitation, ME_num, ME_order (i32), then ME_num rows of
# mixed-excitation filter taps (i32 byte count + ME_order f64 each, after an i32 row count),
# spamf0 (i32) and gain (f32), in the machine's byte order.
_TAIL_HEAD = struct.Struct("=ff5i")


def _find_mlsa_alpha(dump: bytes) -> int:
    """Offset of ``mlsa_alpha`` in a flitevox dump.

    Scans back from the end of the file and returns the first (last in the file) position whose
    tail parses exactly: plausible alpha and sizes, ``ME_num`` rows of ``8 * ME_order`` bytes, then
    ``spamf0`` and ``gain`` ending at the last byte. It does not check that no earlier position
    would also parse.
    """
    size = len(dump)
    for pos in range(size - _TAIL_HEAD.size - 8, max(-1, size - 65536), -1):
        alpha, _beta, _multi, _mixed, me_num, me_order, rows = _TAIL_HEAD.unpack_from(dump, pos)
        sizes_ok = rows == me_num and 0 <= me_num <= 64 and 0 <= me_order <= 4096
        if not (0.0 < alpha < 1.0 and sizes_ok):
            continue
        end = pos + _TAIL_HEAD.size
        for _ in range(rows):
            if end + 4 > size or struct.unpack_from("=i", dump, end)[0] != 8 * me_order:
                break
            end += 4 + 8 * me_order
        else:
            if end + 8 == size:
                return pos
    raise ValueError("no MLSA filter parameters at the end of the flite voice dump")


@functools.cache
def _stock_dump(name: str) -> tuple[bytes, int]:
    """``flite -voicedump`` of clustergen voice ``name`` and the offset of its ``mlsa_alpha``."""
    stock = Path(_voice_dir()) / f"{name}.flitevox"
    proc = subprocess.run(
        ["flite", "-voice", name, "-voicedump", str(stock), "-t", "a", "none"],
        capture_output=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or not stock.exists():
        raise RuntimeError(
            f"flite could not dump voice {name!r} (exit {proc.returncode}): "
            f"{proc.stderr.decode(errors='replace')[:300]}"
        )
    dump = stock.read_bytes()
    try:
        return dump, _find_mlsa_alpha(dump)
    except ValueError as err:
        raise RuntimeError(f"flite voice {name!r} ({stock}): {err}") from None


@functools.cache
def _patched_voice(name: str, alpha: float) -> Path:
    """A flitevox file of clustergen voice ``name`` with MLSA all-pass constant ``alpha``.

    Written once per process into a private temporary directory, removed at exit.
    """
    dump, pos = _stock_dump(name)
    patched = bytearray(dump)
    struct.pack_into("=f", patched, pos, alpha)
    out = Path(_voice_dir()) / f"{name}-alpha{alpha:g}.flitevox"
    out.write_bytes(patched)
    return out


@functools.lru_cache(maxsize=1)
def _voice_dir() -> str:
    folder = tempfile.mkdtemp(prefix="asr-flitevox-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def is_available(voice: Voice) -> bool:
    """Whether the engine is installed and knows the voice name."""
    if voice.engine == "flite":
        return voice.name in _flite_voices()
    languages, variants = _espeak_voices()
    language, _, variant = voice.name.partition("+")
    return language in languages and (not variant or variant in variants)


def available_voices(voices: Sequence[Voice] = VOICES) -> tuple[Voice, ...]:
    """The voices of ``voices`` that this machine can synthesize (logs the missing ones)."""
    found = tuple(v for v in voices if is_available(v))
    missing = [v.label for v in voices if v not in found]
    if missing:
        logger.warning("TTS voices not available here (skipped): %s", ", ".join(missing))
    return found


def _command(voice: Voice, text: str, rate_factor: float, pitch_offset: float) -> list[str]:
    if voice.engine == "espeak-ng":
        rate = round(voice.base_rate * rate_factor)
        pitch = min(99, max(0, round(voice.base_pitch + pitch_offset)))
        return ["espeak-ng", "-v", voice.name, "-s", str(rate), "-p", str(pitch), "--stdout", text]
    if voice.engine == "flite":
        stretch = 1.0 / (voice.base_rate * rate_factor)
        f0 = voice.base_pitch * 2.0 ** (pitch_offset / 12.0)  # offset in semitones for flite
        name = voice.name
        if voice.mlsa_alpha is not None:
            name = str(_patched_voice(voice.name, voice.mlsa_alpha))
        return [
            "flite", "-voice", name,
            "--setf", f"duration_stretch={stretch:.4f}",
            "--setf", f"int_f0_target_mean={f0:.2f}",
            "-t", text, "-o", "/dev/stdout",
        ]  # fmt: skip
    raise ValueError(f"unknown TTS engine {voice.engine!r}: expected 'espeak-ng' or 'flite'")


def render(
    voice: Voice, text: str, rate_factor: float = 1.0, pitch_offset: float = 0.0
) -> np.ndarray:
    """Synthesize ``text`` with ``voice``.

    Args:
        voice: the speaker.
        text: what to say (see :func:`asr.synth.text_norm.tts_text`).
        rate_factor: speaking-rate multiplier (> 1 is faster).
        pitch_offset: espeak-ng pitch units (0-99 scale) or, for flite, semitones.

    Returns:
        Mono float64 samples in [-1, 1] at 16 kHz, shape (T,).

    Raises:
        RuntimeError: when the engine fails or produces no audio.
    """
    if rate_factor <= 0:
        raise ValueError(f"rate_factor must be > 0, got {rate_factor}")
    cmd = _command(voice, text, rate_factor, pitch_offset)
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or len(proc.stdout) <= 44:
        raise RuntimeError(
            f"{voice.label} failed on {text!r} (exit {proc.returncode}): "
            f"{proc.stderr.decode(errors='replace')[:300]}"
        )
    samples, rate = sf.read(io.BytesIO(proc.stdout), dtype="float64", always_2d=True)
    samples = samples.mean(axis=1)
    return resample(samples, int(rate), SAMPLE_RATE)
