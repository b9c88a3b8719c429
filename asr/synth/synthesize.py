"""Synthetic LibriSpeech: a corpus in the exact LibriSpeech layout spoken by Debian TTS voices.

LibriSpeech cannot be downloaded here, so this module writes a stand-in that every LibriSpeech
tool reads unchanged (lhotse's ``prepare_librispeech`` included)::

    <root>/LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt:04d>.flac  16 kHz mono
    <root>/LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    <root>/LibriSpeech/<part>/.completed             (lhotse's download step then skips the part)
    <root>/LibriSpeech/SPEAKERS.TXT                  (ID | SEX | SUBSET | MINUTES | NAME: Kaldi's)
    <root>/LibriSpeech/synthesis.json                (what was generated, with which settings)
    <root>/LibriSpeech/train-text.txt                (all text training may say: an LM corpus)

Design:

* Parts use LibriSpeech names (:data:`asr.synth.parts.PARTS`): ``train-clean-5``, ``dev-clean-2``
  (mini LibriSpeech), ``test-clean`` and a few others. ``*-other`` parts get harsher acoustics.
* Sentences (:mod:`asr.synth.sentences`) come from the Debian ``fortunes`` package, normalised to
  upper-case ``A-Z'`` words (:mod:`asr.synth.text_norm`), 4-16 words, deduplicated, optionally
  limited to the ``top_words`` most frequent words (1500 in the ``mini_tts`` preset) so a tiny model
  can learn the corpus in minutes. The pool is shuffled with the seed and cut into consecutive,
  disjoint slices: test parts first, then dev, then train, so no sentence is in two parts and
  the test sentences do not change when the training size does. The few sentences (under 1%)
  that occur inside another pool sentence as a run of its words ("NICE GUYS FINISH LAST" in a
  longer quip) are moved to the end of the shuffled order
  (:func:`asr.synth.sentences.contained_last`), so no dev/test sentence is said inside a
  training sentence (a dev/test part that would reach them is refused). With
  ``train_text="segments"`` (the ``mini_tts`` preset) training parts instead say *segments*: runs of
  allowed words from any source sentence (:func:`asr.synth.sentences.training_segments`), about 7x
  more distinct text than whole sentences; the first ``held_out_sentences`` sentences of the
  shuffled pool are then reserved for dev/test parts and no training segment contains one of them.
* Speakers (:mod:`asr.synth.voices`) are 20 voice identities of espeak-ng and flite; 3 are held out:
  test parts use only those, train and dev parts only the other 17. Utterance ``i`` of a part
  goes to speaker ``i mod S``. With ``voices_per_sentence=R`` a training part speaks each of its
  sentences R times, utterances ``Rj .. Rj + R - 1`` saying sentence ``j`` in R different voices
  (each with its own rate, pitch and noise): more acoustic variety per sentence than speed
  perturbation gives, at the same number of hours (dev and test parts keep one utterance per
  sentence); each speaker has one chapter per 50 of its utterances, with chapter
  id ``speaker * 100 + part_code * 10 + k``.
* Per utterance a random generator seeded from ``(seed, crc32(part), index)`` draws the speaking
  rate and pitch, for training parts a speed factor (0.9-1.1: the rendering resampled, so tempo,
  pitch and formants move together, as in LibriSpeech recipes' speed perturbation, but without
  copies), leading/trailing silence, optional reverberation (synthetic exponential-decay
  room response), coloured noise at a random SNR and the peak level
  (:mod:`asr.synth.audio_effects`), so the same seed gives byte-identical FLAC files whatever the
  number of worker processes.
* ``train-text.txt`` is the corpus's LM text, the counterpart of LibriSpeech's
  ``librispeech-lm-norm.txt``: one line per text that training parts may say. With segments that
  is every training segment (more than the training parts speak, and still none containing a
  dev/test sentence); with whole sentences it is the training parts' own sentences, since the
  rest of the pool is where later dev/test parts take theirs.
* Utterances are synthesized by a process pool (``num_jobs``) with a tqdm progress bar.
* Re-running with the same settings skips completed parts; new parts can be added to an existing
  corpus (they take sentences after those already used), except a training part whose text
  would say a word of the biasing set's phrases (made before, as unseen in training: refused
  before anything is written); different settings need ``overwrite``
  (:mod:`asr.synth.corpus_state`).
* A part is built in a hidden staging directory beside its final name and renamed into place
  only once all its audio, transcripts and ``.completed`` are written
  (:func:`asr.fileio.staging_directory`), after the manifest that lists it: a failed or killed
  run leaves no half-made part under a part's name (the next run removes its leftovers and makes
  the missing parts), and ``overwrite`` removes the previous synthesis only once the new parts
  are made. One run at a time writes a corpus (:func:`asr.fileio.output_lock`; a second is
  refused, naming it).

Usage::

    asr synthesize --root data --preset mini_tts --num-jobs 2
    asr synthesize --root data --num-utts train-clean-5=200 test-clean=20 --seed 1

or from Python: ``synthesize_corpus(Path("data"), {"train-clean-5": 200, "test-clean": 20})``.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from asr.fileio import (
    output_lock,
    publish_directory,
    staging_directory,
    write_atomic,
    write_text_atomic,
)
from asr.synth.audio_effects import (
    add_noise,
    add_reverb,
    normalize_peak,
    pad_silence,
    speed_perturb,
    to_pcm16,
    trim_silence,
)
from asr.synth.biasing import (
    BIASING_DIR,
    phrases_in_text,
    plan_biasing_set,
    write_phrase_lists,
)
from asr.synth.corpus_state import (
    SPEAKERS_NAME,
    allocate,
    load_manifest,
    part_info,
    record_biasing_parts,
    recorded_settings,
    recorded_sources,
    remove_replaced,
    reuse_existing,
    settings_of,
    write_manifest,
    write_speakers_file,
)
from asr.synth.parts import BIASING_PARTS, PARTS
from asr.synth.sentences import (
    build_pool,
    contained_last,
    default_sources,
    shuffle_pool,
    training_segments,
)
from asr.synth.text_norm import tts_text
from asr.synth.voices import SAMPLE_RATE, VOICES, Voice, available_voices, render

logger = logging.getLogger(__name__)

UTTS_PER_CHAPTER = 50
TRAIN_TEXTS = ("sentences", "segments")
TRAIN_TEXT_FILE = "train-text.txt"


@dataclass(frozen=True)
class Preset:
    """Default sizes and sentence options of a named corpus."""

    num_utts: dict[str, int]
    top_words: int | None
    voices_per_sentence: int = 1
    train_text: str = "sentences"


PRESETS: dict[str, Preset] = {
    # ~1500-word vocabulary, 15000 distinct training segments (~9.9 h, of the pool's ~15750): a
    # tiny model learns it in minutes on 2 cores; with whole sentences only (~2000 of them) it
    # would memorise them, and with 6000 segments it learned their renderings (a training
    # segment re-rendered with other rate/noise: 36% WER against 13% on the rendering it saw).
    "mini_tts": Preset(
        {"train-clean-5": 15000, "dev-clean-2": 100, "test-clean": 100}, 1500, train_text="segments"
    ),
    # Unrestricted vocabulary (~12k words), more data, plus the harder *-other test set.
    "large": Preset(
        {"train-clean-5": 6000, "dev-clean-2": 300, "test-clean": 300, "test-other": 300}, None
    ),
}


@dataclass(frozen=True)
class UtterancePlan:
    """Everything a worker needs to synthesize and write one utterance."""

    part: str
    index: int  # position in the part, seeds the utterance's generator
    utt_id: str  # "<speaker>-<chapter>-<utt:04d>"
    speaker_id: int
    chapter_id: int
    voice: Voice
    transcript: str
    path: Path  # the .flac file
    seed: int


@dataclass(frozen=True)
class SynthesisResult:
    """Summary of :func:`synthesize_corpus`.

    Attributes:
        corpus_dir: ``<root>/LibriSpeech``.
        num_utts: utterances per part (all parts now in the corpus, skipped ones included).
        hours: audio hours per part.
        synthesized: utterances synthesized by this call (0 when everything was up to date).
        elapsed_s: wall-clock seconds of the synthesis.
    """

    corpus_dir: Path
    num_utts: dict[str, int]
    hours: dict[str, float]
    synthesized: int
    elapsed_s: float

    @property
    def utts_per_second(self) -> float:
        return self.synthesized / self.elapsed_s if self.elapsed_s > 0 else 0.0


def utterance_rng(seed: int, part: str, index: int) -> np.random.Generator:
    """The generator of utterance ``index`` of ``part``: independent of order and process."""
    return np.random.default_rng([seed, zlib.crc32(part.encode("utf-8")), index])


def synthesize_utterance(plan: UtterancePlan) -> int:
    """Synthesize, post-process and write one utterance as 16-bit FLAC.

    Returns:
        The number of samples written.
    """
    rng = utterance_rng(plan.seed, plan.part, plan.index)
    acoustics = PARTS[plan.part].acoustics
    rate = rng.uniform(*acoustics.rate)
    spread = (
        acoustics.espeak_pitch if plan.voice.engine == "espeak-ng" else acoustics.flite_semitones
    )
    pitch = rng.uniform(-spread, spread)
    samples = render(plan.voice, tts_text(plan.transcript), rate, pitch)
    if acoustics.speed is not None:
        samples = speed_perturb(samples, rng.uniform(*acoustics.speed), SAMPLE_RATE)
    samples = trim_silence(samples, SAMPLE_RATE)
    samples = pad_silence(
        samples, SAMPLE_RATE, rng.uniform(*acoustics.lead_s), rng.uniform(*acoustics.trail_s)
    )
    if rng.random() < acoustics.reverb_prob:
        rt60, drr = rng.uniform(*acoustics.rt60_s), rng.uniform(*acoustics.drr_db)
        samples = add_reverb(samples, rng, SAMPLE_RATE, rt60, drr)
    samples = add_noise(
        samples, rng, rng.uniform(*acoustics.snr_db), rng.uniform(*acoustics.noise_color)
    )
    pcm = to_pcm16(normalize_peak(samples, rng.uniform(*acoustics.peak_db)))
    # Not durable: an fsync per file would add minutes to a 15k-file corpus that can be remade.
    write_atomic(plan.path, lambda tmp: sf.write(tmp, pcm, SAMPLE_RATE, format="FLAC",
                                                 subtype="PCM_16"), durable=False)
    return len(pcm)


def plan_part(
    part: str,
    sentences: Sequence[str],
    voices: Sequence[Voice],
    corpus_dir: Path,
    seed: int,
    num_utts: int | None = None,
    voices_per_sentence: int = 1,
    part_dir: Path | None = None,
) -> list[UtterancePlan]:
    """Assign speakers, chapters and utterance ids to the sentences of one part.

    Utterance ``i`` says ``sentences[i // voices_per_sentence]`` and goes to ``voices[i % S]``
    (sorted by speaker id), so the copies of a sentence get different voices (callers keep
    ``1 <= voices_per_sentence <= S``: :func:`synthesize_corpus` checks it before touching the
    output); a speaker's ``j``-th utterance is in its chapter ``k = min(j // 50, 9)``.
    ``num_utts`` defaults to ``len(sentences) * voices_per_sentence``. The files go under
    ``part_dir`` (default ``corpus_dir / part``; a staging directory while the part is made).
    """
    spec = PARTS[part]
    part_dir = corpus_dir / part if part_dir is None else part_dir
    speakers = sorted(voices, key=lambda v: v.speaker_id)
    total = len(sentences) * voices_per_sentence if num_utts is None else num_utts
    if total > len(sentences) * voices_per_sentence:
        raise ValueError(
            f"part {part!r}: {total} utterances need more than {len(sentences)} sentences"
        )
    plans = []
    for index in range(total):
        transcript = sentences[index // voices_per_sentence]
        voice = speakers[index % len(speakers)]
        within = index // len(speakers)
        chapter_k = min(within // UTTS_PER_CHAPTER, 9)
        number = within - chapter_k * UTTS_PER_CHAPTER
        if number > 9999:
            raise ValueError(f"part {part!r}: more than 10000 utterances in one chapter")
        chapter = voice.speaker_id * 100 + spec.code * 10 + chapter_k
        utt_id = f"{voice.speaker_id}-{chapter}-{number:04d}"
        path = part_dir / str(voice.speaker_id) / str(chapter) / f"{utt_id}.flac"
        plans.append(
            UtterancePlan(
                part, index, utt_id, voice.speaker_id, chapter, voice, transcript, path, seed
            )
        )
    return plans


def write_transcripts(plans: Sequence[UtterancePlan]) -> None:
    """Write one ``<speaker>-<chapter>.trans.txt`` per chapter, lines sorted by utterance id."""
    chapters: dict[Path, list[UtterancePlan]] = {}
    for plan in plans:
        chapters.setdefault(plan.path.parent, []).append(plan)
    for chapter_dir, items in chapters.items():
        name = f"{items[0].speaker_id}-{items[0].chapter_id}.trans.txt"
        lines = sorted(f"{p.utt_id} {p.transcript}\n" for p in items)
        write_text_atomic(chapter_dir / name, "".join(lines))


def _run_plans(plans: Sequence[UtterancePlan], num_jobs: int, progress: bool) -> list[int]:
    bar = tqdm(total=len(plans), desc="synthesize", unit="utt", disable=not progress)
    try:
        if num_jobs <= 1:
            lengths = []
            for plan in plans:
                lengths.append(synthesize_utterance(plan))
                bar.update()
            return lengths
        context = multiprocessing.get_context("spawn")  # safe even if the caller holds threads
        with ProcessPoolExecutor(num_jobs, mp_context=context) as pool:
            lengths = []
            chunk = max(1, min(16, len(plans) // (4 * num_jobs)))
            for length in pool.map(synthesize_utterance, plans, chunksize=chunk):
                lengths.append(length)
                bar.update()
            return lengths
    finally:
        bar.close()


def _validate_sizes(num_utts: Mapping[str, int]) -> dict[str, int]:
    if not num_utts:
        raise ValueError("num_utts is empty: expected sizes like {'train-clean-5': 100}")
    sizes = {}
    for part, count in num_utts.items():
        if part in BIASING_PARTS:
            raise ValueError(f"part {part!r} is the biasing set's: make it with --biasing N")
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}: expected one of {', '.join(PARTS)}")
        if not _int_within(count, 1):
            raise ValueError(f"num_utts[{part!r}] must be a positive int, got {count!r}")
        sizes[part] = count
    return sizes


def _int_within(value: object, low: int, high: int | None = None) -> bool:
    """Whether ``value`` is an int (a bool is not) within ``[low, high]`` (no upper bound when
    ``high`` is None): the check of every count and seed option."""
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def _validate_run(seed: int, num_jobs: int) -> None:
    """Options every synthesis takes, checked before anything is written."""
    if not _int_within(seed, 0):
        raise ValueError(f"seed must be a non-negative int (--seed), got {seed!r}")
    if not _int_within(num_jobs, 1):
        raise ValueError(f"num_jobs must be a positive int (--num-jobs), got {num_jobs!r}")


def _check_free(slices: Mapping[str, tuple[int, int]], num_free: int) -> None:
    """Refuse a dev/test slice that reaches the pool sentences occurring inside other ones.

    Those are last in the order (:func:`asr.synth.sentences.contained_last`); a dev/test part
    gets them only when it comes after training parts that used up the others (an incremental
    run) or the pool is nearly exhausted.
    """
    for part, (start, count) in slices.items():
        if PARTS[part].role != "train" and start + count > num_free:
            raise ValueError(
                f"part {part!r} needs sentences {start}..{start + count - 1} of the shuffled "
                f"pool, but only the first {num_free} occur inside no other pool sentence (a "
                "dev/test sentence must not be said inside a training sentence); request fewer "
                "utterances, synthesize dev/test parts with the training parts, or use "
                "train_text='segments' (--train-text segments)"
            )


def _check_biasing_unseen(corpus_dir: Path, new_train_parts: Sequence[str],
                          lm_text: Sequence[str]) -> None:
    """Refuse new training parts whose training text ``lm_text`` would say a word of the
    corpus's biasing set's phrases, which were chosen as unseen in the training text before.

    Raises:
        ValueError: naming the parts, the phrases (the first five) and what to do.
    """
    if not new_train_parts:
        return
    said = phrases_in_text(corpus_dir, lm_text)
    if said:
        shown = ", ".join(repr(p) for p in said[:5]) + (" ..." if len(said) > 5 else "")
        raise ValueError(
            f"{', '.join(new_train_parts)} would put {len(said)} phrases of the biasing set in "
            f"{corpus_dir / BIASING_DIR} ({shown}) into the training text, where a biasing "
            f"phrase must be unseen; remove {', '.join(BIASING_PARTS)} and {BIASING_DIR}/ from "
            f"{corpus_dir}, add the training parts, then make the biasing set again "
            "(--biasing N), or pass overwrite=True (--overwrite)"
        )


def _voices_by_role(voices: Sequence[Voice], parts: Sequence[str]) -> dict[str, list[Voice]]:
    if not voices:
        raise ValueError(
            "no TTS voices available: install espeak-ng and flite (apt-get install -y espeak-ng "
            "flite) or pass voices"
        )
    ids = [v.speaker_id for v in voices]
    if len(set(ids)) != len(ids):
        raise ValueError(f"speaker ids must be unique, got {sorted(ids)}")
    by_role = {
        "train": [v for v in voices if not v.held_out],
        "dev": [v for v in voices if not v.held_out],
        "test": [v for v in voices if v.held_out],
    }
    for part in parts:
        role = PARTS[part].role
        if not by_role[role]:
            kind = "held-out" if role == "test" else "training (not held-out)"
            raise ValueError(
                f"part {part!r} needs {kind} voices but none of the given voices is one"
            )
    return by_role


def synthesize_corpus(
    root: Path,
    num_utts: Mapping[str, int],
    seed: int = 0,
    num_jobs: int = 1,
    top_words: int | None = 1500,
    min_words: int = 4,
    max_words: int = 16,
    sources: Sequence[Path] | None = None,
    voices: Sequence[Voice] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    voices_per_sentence: int = 1,
    train_text: str = "sentences",
    held_out_sentences: int = 1000,
) -> SynthesisResult:
    """Synthesize a LibriSpeech-layout corpus under ``<root>/LibriSpeech``.

    Args:
        root: output directory (the LibriSpeech ``--dl-dir``).
        num_utts: utterances per part, e.g. ``{"train-clean-5": 1500, "test-clean": 100}``;
            part names from :data:`PARTS`.
        seed: corpus seed: sentence choice and every per-utterance variation.
        num_jobs: worker processes.
        top_words: keep only sentences made of the N most frequent source words (None/0: all).
        min_words: shortest sentence, words.
        max_words: longest sentence, words.
        sources: sentence text files (default: the Debian ``fortunes`` package).
        voices: speakers (default: every voice of :data:`asr.synth.voices.VOICES` installed here).
        overwrite: replace a previous synthesis (its parts, biasing set and manifest), deleted
            once the new parts are made.
        progress: show a tqdm progress bar.
        voices_per_sentence: training parts speak each sentence this many times, in different
            voices (at most the number of training voices); dev and test parts always once.
        train_text: what training parts say: whole ``"sentences"`` of the pool, or
            ``"segments"`` (word runs from every source sentence, see the module docstring).
        held_out_sentences: with segments, the pool sentences reserved for dev/test parts
            (clipped to the pool size); no training segment contains one of them.

    Returns:
        A :class:`SynthesisResult`.

    Raises:
        ValueError: unknown part, bad size, no voices for a part, too few sentences.
        FileExistsError: the output exists with other settings (and ``overwrite`` is False).
    """
    sizes = _validate_sizes(num_utts)
    _validate_run(seed, num_jobs)
    if train_text not in TRAIN_TEXTS:
        raise ValueError(f"train_text={train_text!r}: expected one of {', '.join(TRAIN_TEXTS)}")
    if not _int_within(held_out_sentences, 0):
        raise ValueError(
            f"held_out_sentences must be an int >= 0 (--held-out-sentences), got "
            f"{held_out_sentences!r}"
        )
    voices = available_voices(VOICES) if voices is None else tuple(voices)
    by_role = _voices_by_role(voices, list(sizes))
    speakers = len(by_role["train"])
    if not _int_within(voices_per_sentence, 1, max(speakers, 1)):
        raise ValueError(
            f"voices_per_sentence={voices_per_sentence!r}: expected 1..{speakers} (the training "
            "voices)"
        )
    pool = build_pool(
        list(sources) if sources else default_sources(), min_words, max_words, top_words
    )
    repeats = {p: voices_per_sentence if PARTS[p].role == "train" else 1 for p in sizes}
    segments = train_text == "segments"
    reserve = min(held_out_sentences, len(pool.sentences)) if segments else None
    settings = settings_of(
        seed, top_words, min_words, max_words, pool, voices, voices_per_sentence, reserve
    )
    corpus_dir = Path(root) / "LibriSpeech"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(corpus_dir), ExitStack() as staging:
        kept = reuse_existing(corpus_dir, settings, sizes, overwrite)
        num_sentences = {p: -(-n // repeats[p]) for p, n in sizes.items()}  # ceil
        order = shuffle_pool(pool, seed)
        if not segments:  # sentences inside other pool sentences last: never dev/test ones
            order, num_free = contained_last(order)
        texts = {p: order for p in sizes}
        if segments:  # dev/test slices within the reserve, training slices of the segments

            def of_role(parts: Mapping[str, Any], train: bool) -> dict[str, Any]:
                return {p: v for p, v in parts.items() if (PARTS[p].role == "train") == train}

            train_order = training_segments(pool, order[:reserve], seed)
            lm_text = train_order
            train_parts = of_role(num_sentences, True)
            slices = allocate(
                of_role(num_sentences, False), of_role(kept, False), reserve, top_words,
                source=f"the dev/test reserve of held_out_sentences={held_out_sentences}",
                advice="request fewer dev/test utterances or raise held_out_sentences "
                f"(--held-out-sentences; the pool has {len(pool.sentences)} sentences)",
            )  # fmt: skip
            slices |= allocate(
                train_parts, of_role(kept, True), len(train_order), top_words,
                source="the training segments",
            )  # fmt: skip
            texts.update(dict.fromkeys(train_parts, train_order))
        else:
            slices = allocate(num_sentences, kept, len(pool.sentences), top_words)
            _check_free(slices, num_free)
            # the training parts' own sentences, those kept and those made now, in that order
            lm_text = [
                sentence
                for start, count in [
                    *(info["sentences"] for info in kept.values() if info["role"] == "train"),
                    *(v for p, v in slices.items() if PARTS[p].role == "train"),
                ]
                for sentence in order[start : start + count]
            ]
        if not overwrite:  # (overwrite removes the biasing set)
            _check_biasing_unseen(corpus_dir, [p for p in slices if PARTS[p].role == "train"],
                                  lm_text)  # fmt: skip
        parts_info = dict(kept)
        plans_by_part, staged = {}, {}
        for part, (start, count) in slices.items():
            staged[part] = staging.enter_context(staging_directory(corpus_dir / part))
            plans_by_part[part] = plan_part(
                part, texts[part][start : start + count], by_role[PARTS[part].role], corpus_dir,
                seed, num_utts=sizes[part], voices_per_sentence=repeats[part],
                part_dir=staged[part],
            )  # fmt: skip
            for plan in plans_by_part[part]:
                plan.path.parent.mkdir(parents=True, exist_ok=True)
        all_plans = [plan for plans in plans_by_part.values() for plan in plans]
        if kept:
            logger.info("already synthesized with these settings: %s", ", ".join(sorted(kept)))
        started = time.perf_counter()
        lengths = _run_plans(all_plans, num_jobs, progress)
        elapsed = time.perf_counter() - started
        offset = 0
        for part, plans in plans_by_part.items():
            write_transcripts(plans)
            part_lengths = lengths[offset : offset + len(plans)]
            offset += len(plans)
            parts_info[part] = part_info(
                part,
                [p.speaker_id for p in plans],
                [p.chapter_id for p in plans],
                part_lengths,
                slices[part],
            )
            (staged[part] / ".completed").touch()
        if overwrite:  # only now that the new parts are made
            remove_replaced(corpus_dir, sizes)
        # The manifest before the parts: a run killed between the two leaves listed parts that
        # are missing, which the next run makes again (a part on disk that the manifest does not
        # list would be refused).
        write_text_atomic(corpus_dir / TRAIN_TEXT_FILE, "".join(f"{line}\n" for line in lm_text))
        write_manifest(corpus_dir, settings, parts_info, pool, len(all_plans), elapsed, num_jobs)
        for part, tmp in staged.items():
            publish_directory(tmp, corpus_dir / part)
        if staged or not (corpus_dir / SPEAKERS_NAME).is_file():
            write_speakers_file(corpus_dir, voices)
    result = SynthesisResult(
        corpus_dir=corpus_dir,
        num_utts={p: info["num_utts"] for p, info in parts_info.items()},
        hours={p: info["hours"] for p, info in parts_info.items()},
        synthesized=len(all_plans),
        elapsed_s=elapsed,
    )
    if all_plans:
        logger.info(
            "synthesized %d utterances in %.1f s (%.2f utt/s, %d jobs) under %s",
            len(all_plans), elapsed, result.utts_per_second, num_jobs, corpus_dir,
        )  # fmt: skip
    return result


def synthesize_biasing_set(
    root: Path,
    num_per_part: int = 50,
    num_distractors: int = 100,
    seed: int = 0,
    num_jobs: int = 1,
    voices: Sequence[Voice] | None = None,
    progress: bool = True,
) -> SynthesisResult:
    """Synthesizes the contextual-biasing set of :mod:`asr.synth.biasing` into the corpus under
    ``<root>/LibriSpeech`` (which must exist: its training text decides what is rare). The
    candidate sentences come from the corpus's own sentence sources, of its sentence lengths
    (``synthesis.json``'s settings; the defaults of :func:`synthesize_corpus` without one).

    Writes the parts of :data:`asr.synth.parts.BIASING_PARTS` in the LibriSpeech layout, spoken
    by the held-out voices with ``test-clean``'s acoustics, their phrase lists and, per part,
    ``biasing/<part>.phrases.tsv`` (``utt_id<TAB>phrase``). Parts already there and their phrase
    lists are replaced once the new parts' audio is made (built in staging directories, as the
    corpus's parts are): a failed run leaves the earlier set whole.

    Returns:
        A :class:`SynthesisResult` of the two parts.

    Raises:
        ValueError: ``synthesis.json`` records a relative sentence source (an older asr's:
            :func:`asr.synth.corpus_state.recorded_sources`), before anything is written.
    """
    _validate_run(seed, num_jobs)
    if not _int_within(num_per_part, 1):
        raise ValueError(f"num_per_part must be a positive int (--biasing), got {num_per_part!r}")
    corpus_dir = Path(root) / "LibriSpeech"
    voices = available_voices(VOICES) if voices is None else tuple(voices)
    held_out = _voices_by_role(voices, list(BIASING_PARTS))["test"]
    if not corpus_dir.is_dir():
        raise FileNotFoundError(
            f"{corpus_dir / TRAIN_TEXT_FILE} is missing: synthesize the corpus first"
        )
    with output_lock(corpus_dir), ExitStack() as staging:
        # candidates from the corpus's own sentence sources and lengths (synthesis.json)
        manifest = load_manifest(corpus_dir)
        settings = {} if manifest is None else recorded_settings(manifest)
        sources = None if manifest is None else recorded_sources(manifest, corpus_dir)
        word_counts = {key: settings[key] for key in ("min_words", "max_words") if key in settings}
        chosen = plan_biasing_set(
            corpus_dir, num_per_part, num_distractors, seed, sources=sources, **word_counts
        )  # fmt: skip
        plans_by_part, staged, phrases = {}, {}, {}
        for part, pairs in chosen.sentences.items():
            staged[part] = staging.enter_context(staging_directory(corpus_dir / part))
            plans = plan_part(
                part, [s for s, _ in pairs], held_out, corpus_dir, seed, part_dir=staged[part]
            )
            for plan in plans:
                plan.path.parent.mkdir(parents=True, exist_ok=True)
            plans_by_part[part] = plans
            phrases[part] = "".join(
                f"{plan.utt_id}\t{phrase}\n" for plan, (_, phrase) in zip(plans, pairs)
            )
        all_plans = [plan for plans in plans_by_part.values() for plan in plans]
        started = time.perf_counter()
        lengths = _run_plans(all_plans, num_jobs, progress)
        elapsed = time.perf_counter() - started
        hours, records, offset = {}, {}, 0
        record_biasing_parts(corpus_dir, {})  # the earlier set's records go before it does
        write_phrase_lists(corpus_dir, chosen)  # only now: the audio of these phrases is made
        for part, plans in plans_by_part.items():
            write_transcripts(plans)
            part_lengths = lengths[offset : offset + len(plans)]
            hours[part] = sum(part_lengths) / SAMPLE_RATE / 3600
            offset += len(plans)
            records[part] = part_info(
                part, [p.speaker_id for p in plans], [p.chapter_id for p in plans], part_lengths,
                None,
            )  # fmt: skip
            (staged[part] / ".completed").touch()
            write_text_atomic(corpus_dir / BIASING_DIR / f"{part}.phrases.tsv", phrases[part])
            publish_directory(staged[part], corpus_dir / part)  # replaces an earlier one
        record_biasing_parts(corpus_dir, records)
        write_speakers_file(corpus_dir, voices)
    return SynthesisResult(
        corpus_dir=corpus_dir,
        num_utts={p: len(plans) for p, plans in plans_by_part.items()},
        hours=hours,
        synthesized=len(all_plans),
        elapsed_s=elapsed,
    )
