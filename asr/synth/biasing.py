"""A contextual-biasing test set for a synthetic corpus: sentences carrying rare phrases that
training never says, spoken by the held-out test voices, plus phrase lists for hotwords.

The set follows the recipe of the LibriSpeech biasing lists (Le et al. 2021, "Contextualized
streaming end-to-end speech recognition with trie-based deep biasing and shallow fusion",
arXiv:2104.02194): utterances whose rare words must be recognised, a per-utterance or global
list of those words, and distractors that occur nowhere. Here:

* candidate sentences come from the unrestricted sentence pool
  (:func:`asr.synth.sentences.build_pool` with no ``top_words``) of the corpus's sentence sources
  and lengths, and must hold exactly one *phrase*: a run of one or two words that are absent from
  the corpus's training text (``train-text.txt``, every text training may say), each at least
  ``min_letters`` long (so several BPE pieces); every other word is in the training text, so only
  the phrase is new to the model;
* phrases are distinct across the set; the sentences are shuffled with the seed and split into
  ``dev-biasing`` (tune the boost there) and ``test-biasing`` (report), ``num_per_part`` each,
  synthesized like ``test-clean`` (clean acoustics, held-out voices only);
* ``biasing/<part>.hotwords.txt`` lists the phrases of a part, one per line (the hotword format
  of :mod:`asr.decoding.context_graph` and sherpa-onnx), ``biasing/<part>.phrases.tsv`` maps each
  utterance to its phrase (for phrase recall, :func:`asr.metrics.wer.phrase_recall`), and
  ``biasing/distractors.txt`` holds ``num_distractors`` other rare phrases of the pool that share
  no word with the set's phrases and do not occur in any sentence of the set.

A training part added to the corpus afterwards whose text would say a word of the phrases is
refused (:func:`phrases_in_text`): the set would no longer be unseen.

Usage::

    asr synthesize --root data --biasing 50   # after the corpus itself (needs train-text.txt)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from asr.fileio import read_lines, read_text, write_text_atomic
from asr.synth.parts import BIASING_PARTS
from asr.synth.sentences import build_pool, default_sources

__all__ = [
    "BIASING_DIR",
    "BiasingSet",
    "choose_biasing_sentences",
    "phrases_in_text",
    "plan_biasing_set",
    "write_phrase_lists",
]

logger = logging.getLogger(__name__)

#: Folder of the phrase lists, inside the corpus directory (``<root>/LibriSpeech``).
BIASING_DIR = "biasing"


@dataclass(frozen=True)
class BiasingSet:
    """The text of a biasing set.

    Attributes:
        sentences: per part, ``(sentence, phrase)`` pairs in utterance order.
        distractors: phrases occurring in no sentence of the set.
    """

    sentences: dict[str, list[tuple[str, str]]]
    distractors: list[str]


def _rare_run(words: Sequence[str], known: set[str]) -> tuple[int, int] | None:
    """(start, end) of the one run of unknown words, or None if there is not exactly one."""
    runs, start = [], None
    for i, word in enumerate(list(words) + [None]):
        unknown = word is not None and word not in known
        if unknown and start is None:
            start = i
        elif not unknown and start is not None:
            runs.append((start, i))
            start = None
    return runs[0] if len(runs) == 1 else None


def choose_biasing_sentences(
    sentences: Sequence[str],
    train_words: set[str],
    num_per_part: int,
    num_distractors: int,
    seed: int = 0,
    min_letters: int = 6,
    max_phrase_words: int = 2,
) -> BiasingSet:
    """Picks the sentences and distractors of a biasing set (see the module docstring).

    Args:
        sentences: candidate sentences (normalised, upper case).
        train_words: every word of the training text.
        num_per_part: sentences of each of :data:`asr.synth.parts.BIASING_PARTS`.
        num_distractors: distractor phrases.
        seed: the shuffle.
        min_letters: shortest word of a phrase.
        max_phrase_words: longest phrase, words.

    Raises:
        ValueError: when the candidates hold too few such sentences or distractors.
    """
    found: list[tuple[str, str]] = []
    for sentence in sentences:
        words = sentence.split()
        run = _rare_run(words, train_words)
        if run is None or run[1] - run[0] > max_phrase_words:
            continue
        phrase_words = words[run[0] : run[1]]
        if all(len(w) >= min_letters and w.isalpha() for w in phrase_words):
            found.append((sentence, " ".join(phrase_words)))
    rng = random.Random(seed)
    rng.shuffle(found)
    chosen: list[tuple[str, str]] = []
    used_words: set[str] = set()
    rest: list[str] = []
    for sentence, phrase in found:
        words = set(phrase.split())
        if len(chosen) < num_per_part * len(BIASING_PARTS) and not words & used_words:
            chosen.append((sentence, phrase))
            used_words |= words
        else:
            rest.append(phrase)
    if len(chosen) < num_per_part * len(BIASING_PARTS):
        raise ValueError(
            f"only {len(chosen)} sentences with a rare phrase; {num_per_part} per part of "
            f"{', '.join(BIASING_PARTS)} asked"
        )
    set_words = {w for s, _ in chosen for w in s.split()}
    distractors: list[str] = []
    for phrase in rest:
        words = set(phrase.split())
        if phrase not in distractors and not words & (used_words | set_words):
            distractors.append(phrase)
            set_words |= words  # distractors are distinct too
        if len(distractors) == num_distractors:
            break
    if len(distractors) < num_distractors:
        raise ValueError(f"only {len(distractors)} distractor phrases; {num_distractors} asked")
    parts = {
        part: chosen[i * num_per_part : (i + 1) * num_per_part]
        for i, part in enumerate(BIASING_PARTS)
    }
    return BiasingSet(parts, distractors)


def phrases_in_text(corpus_dir: Path, texts: Iterable[str]) -> list[str]:
    """The phrases of the biasing set in ``corpus_dir`` (``biasing/<part>.hotwords.txt`` and
    ``biasing/distractors.txt``, all chosen as unseen in training) that share a word with
    ``texts``: phrases that a model trained on ``texts`` would have heard.

    Args:
        corpus_dir: ``<root>/LibriSpeech``; without a biasing set there, none.
        texts: sentences of training text.
    """
    phrases = []
    lists = [f"{part}.hotwords.txt" for part in BIASING_PARTS] + ["distractors.txt"]
    for name in lists:
        path = corpus_dir / BIASING_DIR / name
        if path.is_file():
            phrases.extend(read_lines(path))
    if not phrases:
        return []
    words = {word for text in texts for word in text.split()}
    return [phrase for phrase in phrases if set(phrase.split()) & words]


def plan_biasing_set(
    corpus_dir: Path,
    num_per_part: int,
    num_distractors: int = 100,
    seed: int = 0,
    sources: Sequence[Path] | None = None,
    min_words: int = 4,
    max_words: int = 16,
) -> BiasingSet:
    """Chooses the set for the corpus in ``corpus_dir`` (``<root>/LibriSpeech``, whose
    ``train-text.txt`` is the training text); writes nothing (the phrase lists are
    :func:`write_phrase_lists`', once :func:`asr.synth.synthesize.synthesize_biasing_set` has
    made the audio, so that a failed run leaves the lists of the set that is there).

    Raises:
        FileNotFoundError: without ``train-text.txt`` (synthesize the corpus first).
    """
    text_file = corpus_dir / "train-text.txt"
    if not text_file.is_file():
        raise FileNotFoundError(f"{text_file} is missing: synthesize the corpus first")
    train_words = set(read_text(text_file).split())
    pool = build_pool(list(sources) if sources else default_sources(), min_words, max_words, None)
    return choose_biasing_sentences(
        pool.sentences, train_words, num_per_part, num_distractors, seed
    )


def write_phrase_lists(corpus_dir: Path, chosen: BiasingSet) -> None:
    """Writes the phrase lists of ``chosen`` under ``corpus_dir/biasing``: per part
    ``<part>.hotwords.txt``, and ``distractors.txt`` (see the module docstring)."""
    out = corpus_dir / BIASING_DIR
    out.mkdir(parents=True, exist_ok=True)
    for part, pairs in chosen.sentences.items():
        write_text_atomic(out / f"{part}.hotwords.txt", "".join(f"{p}\n" for _, p in pairs))
    write_text_atomic(out / "distractors.txt", "".join(f"{p}\n" for p in chosen.distractors))
    logger.info(
        "biasing set: %s sentences, %d distractors (phrases in %s)",
        "+".join(str(len(v)) for v in chosen.sentences.values()), len(chosen.distractors), out,
    )  # fmt: skip
