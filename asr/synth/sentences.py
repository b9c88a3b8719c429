"""English sentence pool for the synthetic corpus, built from text shipped in Debian packages.

Source: the ``fortunes`` Debian package (``apt-get install fortunes``, 850 kB, pulls
``fortunes-min``) installs about 2.6 MB of English quotations, proverbs and jokes in
``/usr/share/games/fortunes``: entries separated by ``%`` lines, attributions on ``-- Author``
lines. We read a fixed, sorted list of its general-interest files (technical jargon, ASCII art and
the cruder files are left out), drop attributions, split sentences, normalise them with
:mod:`asr.synth.text_norm` and keep those with ``min_words..max_words`` words.

Vocabulary restriction: a tiny model learns a corpus in minutes only when its vocabulary is small,
so with ``top_words=N`` a sentence is kept only when all its words are among the N most frequent
words of the source (counted over all safe sentences; ties broken alphabetically). With the default
files, N=1000 keeps about 1,600 distinct sentences, N=1500 about 2,300, N=2000 about 3,000 and no
restriction about 10,900.

Training segments: whole sentences under a small vocabulary are few (the same few thousand
sentences, memorised by the model after a few epochs), so the pool also keeps *segments*: every
maximal run of at least ``min_words`` allowed words inside ANY source sentence (runs longer than
``max_words`` are cut into consecutive pieces). At N=1500 there are about 16,600 of them against
2,300 whole sentences. :func:`training_segments` lists them in a seeded order without any segment
that contains a held-out (dev / test) sentence, so evaluation text stays unseen.

The pool is sorted and deduplicated, so it depends only on the text files and the options; a
seeded shuffle (:func:`shuffle_pool`) then decides which sentence goes where. When training parts
say whole sentences, :func:`contained_last` moves the sentences that occur inside another pool
sentence (about 80 of 10,900 unrestricted) behind the others, where dev/test parts never take
them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from asr.fileio import read_text
from asr.synth.text_norm import normalize_sentence, split_sentences

logger = logging.getLogger(__name__)

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# General-interest files of the Debian `fortunes` package (1:1.99.1), in a fixed order.
FORTUNES_FILES: tuple[str, ...] = (
    "art", "cookie", "education", "food", "fortunes", "goedel", "humorists", "kids", "law",
    "literature", "love", "magic", "medicine", "miscellaneous", "news", "people", "pets",
    "platitudes", "politics", "riddles", "science", "songs-poems", "sports", "wisdom", "work",
)  # fmt: skip
_ENTRY_SEPARATOR = re.compile(r"^%\s*$", flags=re.MULTILINE)
_ATTRIBUTION = re.compile(r"^\s*--")


@dataclass(frozen=True)
class SentencePool:
    """A sorted, deduplicated set of normalised sentences.

    Attributes:
        sentences: upper-case transcripts, sorted, unique.
        vocabulary: the allowed words (all words of ``sentences`` when unrestricted), sorted.
        num_candidates: distinct safe sentences of the right length before the vocabulary filter.
        sources: the text files read.
        segments: runs of ``min_words..max_words`` allowed words from all source sentences,
            sorted, unique (a superset of ``sentences``).
    """

    sentences: tuple[str, ...]
    vocabulary: tuple[str, ...]
    num_candidates: int
    sources: tuple[str, ...]
    segments: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        """SHA-256 of the sentences (identifies the pool in the corpus manifest)."""
        return hashlib.sha256("\n".join(self.sentences).encode("utf-8")).hexdigest()


def default_sources() -> tuple[Path, ...]:
    """The default text files (from the Debian ``fortunes`` package).

    Raises:
        FileNotFoundError: when a file is missing, naming it and the package to install.
    """
    paths = tuple(FORTUNES_DIR / name for name in FORTUNES_FILES)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"sentence source files missing: {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}; install the Debian package 'fortunes' "
            "(apt-get install -y fortunes) or pass your own text files"
        )
    return paths


def read_raw_sentences(path: Path) -> list[str]:
    """Read one text file and split it into raw sentences.

    Fortune files (entries between ``%`` lines) and plain text (line-wrapped paragraphs) both
    work; lines starting with ``--`` (attributions) are dropped.

    Args:
        path: a UTF-8 text file, gzip-compressed or not (:func:`asr.fileio.read_text`; bytes
            that are not UTF-8 read as U+FFFD, which no kept sentence holds).

    Returns:
        Raw sentences in file order.
    """
    text = read_text(path, errors="replace")
    sentences: list[str] = []
    for entry in _ENTRY_SEPARATOR.split(text):
        lines = [line for line in entry.splitlines() if not _ATTRIBUTION.match(line)]
        sentences.extend(split_sentences("\n".join(lines)))
    return sentences


@functools.lru_cache(maxsize=64)
def _normalized_sentences(path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    """Safe normalised sentences of one file (cached per file version: mtime and size)."""
    del mtime_ns, size  # cache key only
    normalized = (normalize_sentence(raw) for raw in read_raw_sentences(Path(path)))
    return tuple(s for s in normalized if s is not None)


def build_pool(
    sources: Sequence[Path],
    min_words: int = 4,
    max_words: int = 16,
    top_words: int | None = 1500,
) -> SentencePool:
    """Build the sentence pool from text files.

    Args:
        sources: text files (see :func:`read_raw_sentences`).
        min_words: shortest sentence kept, in words.
        max_words: longest sentence kept, in words.
        top_words: keep only sentences whose words are all among this many most frequent words
            of the sources; ``None`` or 0 keeps every sentence.

    Returns:
        The pool.

    Raises:
        ValueError: on empty sources or inconsistent limits.
    """
    if not sources:
        raise ValueError("no sentence sources given: expected at least one text file")
    if not 1 <= min_words <= max_words:
        raise ValueError(f"expected 1 <= min_words <= max_words, got {min_words} and {max_words}")
    if top_words is not None and top_words < 0:
        raise ValueError(f"top_words must be >= 0 or None, got {top_words}")
    normalized: list[str] = []
    for path in sources:
        stat = Path(path).stat()
        normalized.extend(_normalized_sentences(str(path), stat.st_mtime_ns, stat.st_size))
    counts = Counter(word for sentence in normalized for word in sentence.split())
    candidates = sorted({s for s in normalized if min_words <= len(s.split()) <= max_words})
    if top_words:
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        allowed = {word for word, _ in ranked[:top_words]}
        kept = [s for s in candidates if all(w in allowed for w in s.split())]
    else:
        kept = candidates
        allowed = None
    vocabulary = tuple(sorted({w for s in kept for w in s.split()}))
    segments = _segments(set(normalized), allowed, min_words, max_words)
    logger.info(
        "sentence pool: %d sentences (%d before the top-%s word filter), %d distinct words, "
        "%d segments",
        len(kept), len(candidates), top_words or "all", len(vocabulary), len(segments),
    )  # fmt: skip
    return SentencePool(
        sentences=tuple(kept),
        vocabulary=vocabulary,
        num_candidates=len(candidates),
        sources=tuple(str(p) for p in sources),
        segments=segments,
    )


def _segments(
    sentences: set[str], allowed: set[str] | None, min_words: int, max_words: int
) -> tuple[str, ...]:
    """Runs of allowed words (all words when ``allowed`` is None), cut to ``max_words``."""
    found = set()
    for sentence in sentences:
        run: list[str] = []
        for word in [*sentence.split(), None]:
            if word is not None and (allowed is None or word in allowed):
                run.append(word)
                continue
            for start in range(0, len(run), max_words):
                piece = run[start : start + max_words]
                if len(piece) >= min_words:
                    found.add(" ".join(piece))
            run = []
    return tuple(sorted(found))


def training_segments(pool: SentencePool, held_out: Sequence[str], seed: int) -> list[str]:
    """The pool's segments in a seeded order, minus those containing a held-out sentence.

    Args:
        pool: the pool.
        held_out: sentences that training text must not contain (dev and test sentences).
        seed: shuffle seed (same seed, same order).

    Returns:
        Segments; none of them has a held-out sentence as a run of its words.
    """
    inside = _finder(held_out)
    order = [s for s in pool.segments if not inside(s)]
    random.Random(f"segments-{seed}").shuffle(order)
    return order


def shuffle_pool(pool: SentencePool, seed: int) -> list[str]:
    """The pool's sentences in a seeded random order (same seed, same order)."""
    order = list(pool.sentences)
    random.Random(f"sentences-{seed}").shuffle(order)
    return order


def contained_last(order: Sequence[str]) -> tuple[list[str], int]:
    """``order`` with the sentences that occur inside another of its sentences moved last.

    With whole sentences as training text, a dev/test sentence must not be a run of words of a
    training sentence ("NICE GUYS FINISH LAST" inside "... SAY NICE GUYS FINISH LAST"); parts
    take consecutive slices of this order, dev/test parts before training parts, so dev/test
    slices within the first ``num_free`` sentences cannot occur in any training sentence.

    Args:
        order: distinct sentences (the shuffled pool).

    Returns:
        ``(reordered, num_free)``: the sentences that occur inside no other sentence of
        ``order`` (``num_free`` of them), then the others, each group in its order in ``order``.
    """
    inside = _finder(order)
    contained = {run for sentence in order for run in inside(sentence) if run != sentence}
    free = [s for s in order if s not in contained]
    return free + [s for s in order if s in contained], len(free)


def _finder(needles: Sequence[str]) -> Callable[[str], list[str]]:
    """A function listing the ``needles`` that occur in a text as runs of its words.

    Word-boundary aware: "CAT SAT" occurs in "THE CAT SAT DOWN", not in "THE CAT SATURDAY".
    """
    wanted = {" ".join(n.split()) for n in needles}
    lengths: dict[str, set[int]] = {}  # needle lengths, by first word
    for needle in wanted:
        words = needle.split()
        if words:
            lengths.setdefault(words[0], set()).add(len(words))

    def occurring(text: str) -> list[str]:
        words = text.split()
        found = []
        for start, word in enumerate(words):
            for length in lengths.get(word, ()):
                if start + length > len(words):
                    continue
                run = " ".join(words[start : start + length])
                if run in wanted:
                    found.append(run)
        return found

    return occurring
