"""Bookkeeping of a synthesized corpus: the ``synthesis.json`` manifest and incremental runs.

The manifest records the settings (seed, sentence options and pool digest, voices, the parts'
acoustic ranges) and, per part, its size, speakers, sentence slice ``[start, count]`` of the
shuffled pool, audio hours and samples per speaker (``speaker_samples``, from synthesis, which
``SPEAKERS.TXT`` is written from); ``biasing_parts`` holds the same records, without a slice,
for the biasing set (:func:`record_biasing_parts`). A new run with the same settings skips completed
parts and gives new parts sentences after every slice already used, so parts stay disjoint across
runs; other settings need ``overwrite``, which deletes the previous synthesis only once the new
parts are made (:func:`remove_replaced`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import soundfile as sf

from asr.fileio import read_json_object, write_text_atomic
from asr.synth.biasing import BIASING_DIR
from asr.synth.parts import BIASING_PARTS, PARTS, ROLE_ORDER
from asr.synth.sentences import SentencePool
from asr.synth.voices import SAMPLE_RATE, Voice

logger = logging.getLogger(__name__)

MANIFEST_NAME = "synthesis.json"
MANIFEST_FORMAT = "asr-synthetic-librispeech/1"
SPEAKERS_NAME = "SPEAKERS.TXT"
_SPEAKERS_HEADER = (
    "; Speakers of the synthetic LibriSpeech (asr synthesize): SEX from the TTS voice,\n"
)


def settings_of(
    seed: int,
    top_words: int | None,
    min_words: int,
    max_words: int,
    pool: SentencePool,
    voices: Sequence[Voice],
    voices_per_sentence: int = 1,
    held_out_sentences: int | None = None,
) -> dict[str, Any]:
    """The settings that must match for a corpus to be extended or reused (JSON-ready).

    ``held_out_sentences`` is None when training parts say whole pool sentences (the pool order
    is then :func:`asr.synth.sentences.contained_last`'s, recorded as ``sentence_order``), else
    the number of pool sentences reserved for dev/test parts (training parts say segments).
    """
    settings = {
        "train_voices_per_sentence": voices_per_sentence,
        "train_text": "sentences" if held_out_sentences is None else "segments",
        "held_out_sentences": held_out_sentences,
        "seed": seed,
        "top_words": top_words or None,
        "min_words": min_words,
        "max_words": max_words,
        # absolute: a rerun or `--biasing` from another directory reads the same files
        "sentence_sources": [str(Path(source).resolve()) for source in pool.sources],
        "sentence_pool_sha256": pool.digest,
        "voices": [asdict(v) for v in sorted(voices, key=lambda v: v.speaker_id)],
        # rate, pitch, speed, noise and room ranges of every part (tuples as JSON lists)
        "acoustics": json.loads(
            json.dumps({name: asdict(p.acoustics) for name, p in PARTS.items()})
        ),
    }
    if held_out_sentences is None:
        # whole sentences: pool sentences inside other ones are last (sentences.contained_last),
        # so a corpus sliced from the plain shuffled order is not extended with this one
        settings["sentence_order"] = "contained_last"
    return settings


def load_manifest(corpus_dir: Path) -> dict[str, Any] | None:
    """Read ``<corpus_dir>/synthesis.json``; ``None`` when absent.

    Raises:
        ValueError: the file is not a manifest of this format, or its ``settings`` are no
            object or their ``sentence_sources`` no list of file paths (a hand edit, which
            :func:`recorded_sources` asks for: a path given as a string would otherwise leave
            the biasing set the default sentences), naming the file and the field.
    """
    path = corpus_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    data = read_json_object(path)
    if data.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: settings must be an object, got {settings!r}")
    sources = settings.get("sentence_sources", [])
    if not isinstance(sources, list) or not all(
            isinstance(source, str) and source for source in sources):
        raise ValueError(f"{path}: settings.sentence_sources must be a list of file paths, got "
                         f"{sources!r}")
    return data


def recorded_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The settings of a loaded ``synthesis.json``, its ``sentence_sources`` absolute paths as
    :func:`settings_of` records them, to compare with those of a synthesis run. A relative one,
    as a manifest written before they were recorded so holds (``--text`` as given), is taken
    relative to the working directory, where the run comparing it reads its own ``--text``
    (the recorded pool digest is compared as well). A reader without a ``--text`` of its own
    takes the sources from :func:`recorded_sources`."""
    settings = dict(manifest.get("settings", {}))
    if isinstance(settings.get("sentence_sources"), list):
        settings["sentence_sources"] = [str(Path(source).resolve())
                                        for source in settings["sentence_sources"]]
    return settings


def recorded_sources(manifest: dict[str, Any], corpus_dir: Path) -> list[Path] | None:
    """The sentence sources that ``<corpus_dir>/synthesis.json`` (loaded: ``manifest``)
    records, for a reader that is given none (the biasing set); ``None`` when it records none.

    A relative one, as a manifest written before they were recorded absolute holds (``--text``
    as given), names a file from the working directory of the run that wrote it, which is not
    recorded: from another directory it could name another file, and the recorded pool digest
    cannot tell (it covers only the sentences within ``top_words``, not the rare ones a
    biasing set is made of). So it is refused; a corpus synthesis run from that directory,
    with the same ``--text``, records the sources absolute (synthesizing nothing again).

    Raises:
        ValueError: naming the manifest and its relative sources.
    """
    sources = manifest.get("settings", {}).get("sentence_sources")
    if not isinstance(sources, list) or not sources:
        return None
    relative = [str(source) for source in sources if not Path(source).is_absolute()]
    if relative:
        raise ValueError(
            f"{corpus_dir / MANIFEST_NAME}: sentence sources {', '.join(map(repr, relative))} "
            "are recorded relative to the unrecorded directory of the run that synthesized the "
            "corpus (by an older asr): run the corpus synthesis again from that directory with "
            "the same options, --text among them (it records them absolute and synthesizes "
            "nothing again), or write their absolute paths into the manifest"
        )
    return [Path(source) for source in sources]


def reuse_existing(
    corpus_dir: Path, settings: dict[str, Any], sizes: dict[str, int], overwrite: bool
) -> dict[str, dict[str, Any]]:
    """Decide what an existing corpus directory means for a new run.

    Args:
        corpus_dir: ``<root>/LibriSpeech``.
        settings: :func:`settings_of` of the new run.
        sizes: requested utterances per part.
        overwrite: keep nothing (the caller removes the previous synthesis with
            :func:`remove_replaced` once the new parts are made).

    Returns:
        Manifest entries of the parts to keep: every completed part synthesized with the same
        settings (requested or not); requested parts among them are skipped. Empty with
        ``overwrite``.

    Raises:
        FileExistsError: different settings, a different size for a completed part, or a part
            directory that is not a completed synthesis (e.g. real LibriSpeech), without
            ``overwrite``.
    """
    manifest = load_manifest(corpus_dir)
    if overwrite:
        return {}
    existing = dict((manifest or {}).get("parts", {}))
    stored = None if manifest is None else recorded_settings(manifest)
    if stored is not None and stored != settings:
        changed = sorted(k for k in settings if stored.get(k) != settings[k])
        raise FileExistsError(
            f"{corpus_dir / MANIFEST_NAME} was synthesized with different settings "
            f"({', '.join(changed)}); pass overwrite=True (--overwrite) or another root"
        )
    for part, count in sizes.items():
        done = part in existing and (corpus_dir / part / ".completed").is_file()
        if done and existing[part]["num_utts"] != count:
            raise FileExistsError(
                f"{corpus_dir / part} has {existing[part]['num_utts']} utterances, {count} "
                "requested; pass overwrite=True (--overwrite) or another root"
            )
        if not done:
            existing.pop(part, None)
            if (corpus_dir / part).exists():
                raise FileExistsError(
                    f"{corpus_dir / part} exists but is not a completed synthesis; remove it or "
                    "pass overwrite=True (--overwrite)"
                )
    return existing


def remove_replaced(corpus_dir: Path, sizes: dict[str, int]) -> None:
    """Delete what ``overwrite`` replaces: the parts of the manifest, the requested parts (say,
    a real LibriSpeech part of that name), the biasing set (chosen against the replaced
    training text) and the manifest."""
    manifest = load_manifest(corpus_dir)
    for part in set(sizes) | set((manifest or {}).get("parts", {})) | set(BIASING_PARTS):
        shutil.rmtree(corpus_dir / part, ignore_errors=True)
    shutil.rmtree(corpus_dir / BIASING_DIR, ignore_errors=True)
    (corpus_dir / MANIFEST_NAME).unlink(missing_ok=True)


def allocate(
    sizes: dict[str, int],
    kept: dict[str, dict[str, Any]],
    pool_size: int,
    top_words: int | None,
    source: str = "the pool",
    advice: str = "request fewer utterances or raise top_words",
) -> dict[str, tuple[int, int]]:
    """Disjoint ``(start, count)`` slices of the shuffled pool for the parts not in ``kept``.

    New parts start after the last slice of ``kept`` and are ordered test, dev, train (then by
    name), so test sentences do not depend on the training size. ``source`` and ``advice`` name
    what the slices are cut from (the pool, the dev/test reserve, the training segments) and
    what to change when it is too small, in the error.

    Raises:
        ValueError: the pool has too few sentences.
    """
    start = max((info["sentences"][0] + info["sentences"][1] for info in kept.values()), default=0)
    new = sorted((p for p in sizes if p not in kept), key=lambda p: (ROLE_ORDER[PARTS[p].role], p))
    slices = {}
    for part in new:
        slices[part] = (start, sizes[part])
        start += sizes[part]
    if start > pool_size:
        raise ValueError(
            f"{start} distinct sentences needed but {source} has {pool_size} "
            f"(top_words={top_words}); {advice}"
        )
    return slices


def part_info(
    part: str,
    speaker_ids: Sequence[int],
    chapter_ids: Sequence[int],
    num_samples: Sequence[int],
    sentences: tuple[int, int] | None,
) -> dict[str, Any]:
    """Manifest entry of one synthesized part (ids and samples given per utterance).

    ``sentences`` is the part's slice of the shuffled pool (None for a biasing part, whose
    sentences are chosen otherwise: the entry then has no ``sentences``).
    """
    per_speaker: dict[int, int] = {}
    for speaker, samples in zip(speaker_ids, num_samples, strict=True):
        per_speaker[speaker] = per_speaker.get(speaker, 0) + samples
    info: dict[str, Any] = {
        "num_utts": len(speaker_ids),
        "hours": round(sum(num_samples) / SAMPLE_RATE / 3600.0, 4),
        "role": PARTS[part].role,
        "speakers": sorted(per_speaker),
        "num_chapters": len(set(chapter_ids)),
    }
    if sentences is not None:
        info["sentences"] = list(sentences)
    info["acoustics"] = asdict(PARTS[part].acoustics)
    # SPEAKERS.TXT's MINUTES come from these (JSON keys are strings), not from the FLAC headers
    info["speaker_samples"] = {str(s): per_speaker[s] for s in sorted(per_speaker)}
    return info


def write_manifest(
    corpus_dir: Path,
    settings: dict[str, Any],
    parts: dict[str, dict[str, Any]],
    pool: SentencePool,
    synthesized: int,
    elapsed: float,
    jobs: int,
) -> None:
    """Write ``synthesis.json`` atomically (settings, pool statistics, parts, last run).

    The biasing set's records of the manifest there are kept (``overwrite`` deletes the set and
    the manifest before this is called: :func:`remove_replaced`).
    """
    previous = load_manifest(corpus_dir) or {}
    manifest = {
        "format": MANIFEST_FORMAT,
        "settings": settings,
        "sentence_pool": {
            "size": len(pool.sentences),
            "candidates": pool.num_candidates,
            "vocabulary_size": len(pool.vocabulary),
        },
        "parts": dict(sorted(parts.items())),
        "last_run": {
            "synthesized": synthesized,
            "elapsed_s": round(elapsed, 2),
            "num_jobs": jobs,
        },
    }
    if "biasing_parts" in previous:
        manifest["biasing_parts"] = previous["biasing_parts"]
    write_text_atomic(corpus_dir / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


def record_biasing_parts(corpus_dir: Path, parts: dict[str, dict[str, Any]]) -> None:
    """Set the biasing set's records (:func:`part_info` entries) in the corpus manifest.

    An empty ``parts`` removes them (before the set is replaced: parts without a record have
    their samples read from their FLAC headers). Without a manifest (a corpus not synthesized
    here) nothing is written.
    """
    manifest = load_manifest(corpus_dir)
    if manifest is None or (not parts and "biasing_parts" not in manifest):
        return
    manifest.pop("biasing_parts", None)
    if parts:
        manifest["biasing_parts"] = dict(sorted(parts.items()))
    write_text_atomic(corpus_dir / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


def write_speakers_file(corpus_dir: Path, voices: Sequence[Voice]) -> None:
    """Write LibriSpeech's ``SPEAKERS.TXT`` for the completed parts under ``corpus_dir``.

    One ``ID | SEX | SUBSET | MINUTES | NAME`` line per speaker (Kaldi's LibriSpeech
    ``data_prep.sh`` takes each reader's sex from it and stops without it): SUBSET lists the
    parts the speaker reads in (comma-separated; a LibriSpeech reader has one), MINUTES its audio
    (the samples that synthesis recorded in the manifest, ``speaker_samples``; for a part
    without that record, say one synthesized by an older version, the FLAC headers), NAME the
    voice's label. Speakers of no voice in ``voices`` are left out, with a warning. A
    ``SPEAKERS.TXT`` that this function did not write (real LibriSpeech's, when parts are
    synthesized beside it) is kept, with a warning.
    """
    path = corpus_dir / SPEAKERS_NAME
    if path.is_file() and not path.read_bytes().startswith(_SPEAKERS_HEADER.encode("utf-8")):
        logger.warning("%s was not written by asr synthesize: kept as it is", path)
        return
    manifest = load_manifest(corpus_dir) or {}
    records = {**manifest.get("parts", {}), **manifest.get("biasing_parts", {})}
    by_id = {v.speaker_id: v for v in voices}
    parts: dict[int, list[str]] = {}
    samples: dict[int, int] = {}
    for part in PARTS:
        part_dir = corpus_dir / part
        if not (part_dir / ".completed").is_file():
            continue
        if "speaker_samples" in records.get(part, {}):
            counts = {int(s): n for s, n in records[part]["speaker_samples"].items()}
        else:
            counts = _samples_from_headers(part_dir)
        for speaker in sorted(counts):
            if speaker not in by_id:
                logger.warning("%s: speaker %d is no known voice; not in %s", part_dir, speaker,
                               SPEAKERS_NAME)
                continue
            parts.setdefault(speaker, []).append(part)
            samples[speaker] = samples.get(speaker, 0) + counts[speaker]
    lines = [
        _SPEAKERS_HEADER,
        "; SUBSET the parts the speaker reads in, MINUTES of its audio, NAME the voice.\n",
        ";ID  |SEX| SUBSET           |MINUTES| NAME\n",
    ]
    for speaker in sorted(parts):
        voice = by_id[speaker]
        subset = ",".join(parts[speaker])
        minutes = samples[speaker] / SAMPLE_RATE / 60
        row = f"{str(speaker).ljust(4)} | {voice.sex} | {subset:<16} | {minutes:5.2f}"
        lines.append(f"{row} | {voice.label}\n")
    write_text_atomic(path, "".join(lines))


def _samples_from_headers(part_dir: Path) -> dict[int, int]:
    """Samples per speaker of a part, from its FLAC headers (parts synthesis has no record of)."""
    counts = {}
    for speaker_dir in sorted(p for p in part_dir.iterdir() if p.name.isdigit()):
        counts[int(speaker_dir.name)] = sum(sf.info(f).frames for f in speaker_dir.rglob("*.flac"))
    return counts
