"""Estimate a back-off token n-gram with interpolated modified Kneser-Ney smoothing; write ARPA.

Chen & Goodman 1998, "An empirical study of smoothing techniques for language modeling"
(TR-10-98), section 3.5 / 4.1.6, with the count adjustment and discount estimates that KenLM's
``lmplz`` uses (Heafield et al. 2013, "Scalable modified Kneser-Ney language model
estimation"):

* **Adjusted counts.** The highest order and n-grams starting with ``<s>`` keep their raw counts;
  every other n-gram counts its distinct left extensions (continuation counts, N1+(. w)).
* **Discounts per order** from the counts-of-counts t1..t4 of the adjusted counts:
  ``Y = t1 / (t1 + 2 t2)``, ``D1 = 1 - 2Y t2/t1``, ``D2 = 2 - 3Y t3/t2``, ``D3+ = 3 - 4Y t4/t3``.
  Tiny corpora can make a count-of-count zero; a discount whose estimate is undefined or outside
  (0, k] falls back to ``Y`` (the single absolute discount of Ney et al. 1994), with ``Y`` clipped
  to [0.001, 0.999] and 0.5 when t1 = t2 = 0.
* **Interpolation.** ``p(w|h) = (a(hw) - D(a(hw))) / a(h.) + gamma(h) p(w|h')`` with
  ``gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)) / a(h.)``; unigrams interpolate with the
  uniform distribution over the vocabulary (every listed token id, ``</s>`` and ``<unk>``).
* **ARPA.** A listed n-gram stores its interpolated probability, a listed history stores
  ``gamma(h)`` as its back-off weight; then ``P(w|h) = gamma(h) P(w|h')`` for an unlisted
  ``h w`` is exactly the interpolated model (the form SRILM and KenLM write).

The words are ids: token ids for a token LM, or indices into a word list that
:func:`write_arpa` writes out (a word LM); :class:`asr.decoding.lm.NgramLM` reads either back.
``<s>``/``</s>`` surround every sentence. Pure Python: the mini_tts training text (~100k
tokens) takes a second.
"""

from __future__ import annotations

import gzip
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from asr.decoding.lm import BOS, EOS, UNK
from asr.fileio import write_bytes_atomic

__all__ = ["NgramEstimate", "check_words", "estimate_kneser_ney", "write_arpa"]

logger = logging.getLogger(__name__)

Gram = tuple[int, ...]
_NAMES = {BOS: "<s>", EOS: "</s>", UNK: "<unk>"}
_NO_PROB = -99.0  # log10 "probability" of <s> (never predicted), as ARPA writers store it


@dataclass(frozen=True)
class NgramEstimate:
    """A smoothed n-gram in back-off form (natural logs).

    Attributes:
        order: N.
        log_probs: per order (index n - 1), n-gram -> log P(w | h) (interpolated).
        backoffs: history n-gram -> log gamma(h) (only histories that were seen).
        discounts: per order, (D1, D2, D3+).
    """

    order: int
    log_probs: tuple[dict[Gram, float], ...]
    backoffs: dict[Gram, float]
    discounts: tuple[tuple[float, float, float], ...]

    def log_prob(self, history: Sequence[int], word: int) -> float:
        """Natural-log ``P(word | history)`` (history of token ids, ``BOS`` allowed first); an
        id that is no unigram is ``<unk>``, as :class:`asr.decoding.lm.NgramLM` reads it."""
        unigrams = self.log_probs[0]
        known = tuple(w if w < 0 or (w,) in unigrams else UNK for w in (*history, word))
        history, word = known[max(0, len(known) - self.order) : -1], known[-1]
        total = 0.0
        while True:
            value = self.log_probs[len(history)].get(history + (word,))
            if value is not None:
                return total + value
            if not history:
                return total + unigrams[(UNK,)]
            total += self.backoffs.get(history, 0.0)
            history = history[1:]


def check_words(text: str) -> str:
    """Returns the sentence ``text`` of a word LM's training text, refusing one that writes
    ``<s>`` or ``</s>`` as a word: every sentence is counted between them already, and the
    ARPA file could not write such a word (``<unk>`` is allowed: the unknown word, as KenLM
    counts it).

    Raises:
        ValueError: naming the word.
    """
    for word in text.split():
        if word in (_NAMES[BOS], _NAMES[EOS]):
            raise ValueError(
                f"the word {word!r}: {_NAMES[BOS]} and {_NAMES[EOS]} are the sentence start and "
                "end of the n-gram (around every sentence already), no word a transcript may "
                "write; remove them from the transcripts")
    return text


def _discounts(counts: Counter[Gram], order: int) -> tuple[float, float, float]:
    """Modified-KN discounts (D1, D2, D3+) from the counts-of-counts of ``counts``."""
    of = Counter(c for c in counts.values() if c <= 4)
    t1, t2, t3, t4 = (of[k] for k in (1, 2, 3, 4))
    y = t1 / (t1 + 2 * t2) if t1 + 2 * t2 > 0 else 0.5
    y = min(max(y, 1e-3), 0.999)
    estimates = []
    for k, (num, den) in enumerate(((t2, t1), (t3, t2), (t4, t3)), start=1):
        value = k - (k + 1) * y * num / den if den > 0 else float("nan")
        if not (0.0 < value <= k):  # undefined on tiny data: plain absolute discounting
            logger.debug("order %d: D%d estimate %s replaced by %.3f", order, k, value, y)
            value = y
        estimates.append(value)
    return estimates[0], estimates[1], estimates[2]


def _adjusted_counts(sentences: Iterable[Sequence[int]], order: int) -> list[Counter[Gram]]:
    """Per order (index n - 1), the adjusted counts: raw for the top order and for n-grams that
    start with ``<s>``, otherwise the number of distinct words seen to the left."""
    raw: list[Counter[Gram]] = [Counter() for _ in range(order)]
    for sentence in sentences:
        words = (BOS, *sentence, EOS)
        for end in range(1, len(words)):  # the predicted word words[end] is never <s>
            for n in range(1, min(order, end + 1) + 1):
                raw[n - 1][words[end + 1 - n : end + 1]] += 1
    adjusted: list[Counter[Gram]] = [Counter() for _ in range(order)]
    adjusted[order - 1] = raw[order - 1]
    for n in range(order - 1, 0, -1):
        for gram in raw[n]:  # each distinct (n + 1)-gram extends its suffix once
            adjusted[n - 1][gram[1:]] += 1
        for gram, count in raw[n - 1].items():
            if gram[0] == BOS:
                adjusted[n - 1][gram] = count
    return adjusted


def estimate_kneser_ney(
    sentences: Iterable[Sequence[int]], order: int, vocab: Iterable[int] = ()
) -> NgramEstimate:
    """Interpolated modified Kneser-Ney n-gram over token-id sentences (module docstring).

    Args:
        sentences: token ids per sentence (without ``<s>``/``</s>``; ids must be >= 0, or
            ``UNK``: an unknown word written in the text, counted as KenLM counts ``<unk>``).
        order: N >= 1.
        vocab: token ids that get a unigram even if unseen (e.g. every id of the tokenizer
            but blank); the ids seen in ``sentences`` are always included.

    Raises:
        ValueError: on ``order < 1``, a negative id other than ``UNK``, or no sentences.
    """
    if order < 1:
        raise ValueError(f"n-gram order must be >= 1, got {order}")
    corpus = [tuple(int(t) for t in s) for s in sentences]
    if not corpus:
        raise ValueError("no sentences to estimate an n-gram from")
    negative = sorted({t for s in corpus for t in s if t < 0 and t != UNK})
    if negative:
        raise ValueError(f"token ids must be >= 0 (or <unk>), got {negative[:5]}")
    adjusted = _adjusted_counts(corpus, order)
    discounts = tuple(_discounts(adjusted[n], n + 1) for n in range(order))
    words = sorted({t for s in corpus for t in s if t >= 0} | {int(v) for v in vocab})
    uniform = 1.0 / (len(words) + 2)  # + </s> and <unk>
    log_probs: list[dict[Gram, float]] = [dict() for _ in range(order)]
    backoffs: dict[Gram, float] = {}
    lower: dict[Gram, float] = {}  # linear probabilities of order n - 1
    for n in range(1, order + 1):
        counts = adjusted[n - 1]
        d1, d2, d3 = discounts[n - 1]
        totals: defaultdict[Gram, float] = defaultdict(float)
        kinds: defaultdict[Gram, list[int]] = defaultdict(lambda: [0, 0, 0])
        for gram, count in counts.items():
            totals[gram[:-1]] += count
            kinds[gram[:-1]][min(count, 3) - 1] += 1
        gammas = {
            h: (d1 * k[0] + d2 * k[1] + d3 * k[2]) / totals[h] for h, k in kinds.items()
        }
        current: dict[Gram, float] = {}
        for gram, count in counts.items():
            discount = (d1, d2, d3)[min(count, 3) - 1]
            history = gram[:-1]
            below = lower[gram[1:]] if n > 1 else uniform
            current[gram] = (count - discount) / totals[history] + gammas[history] * below
        if n == 1:
            gamma = gammas.get((), 1.0)
            for word in (*words, EOS, UNK):
                current.setdefault((word,), gamma * uniform)
        for history, gamma in gammas.items():
            if history:
                backoffs[history] = math.log(gamma)
        log_probs[n - 1] = {g: math.log(p) for g, p in current.items()}
        lower = current
    logger.info(
        "%d-gram from %d sentences: %s n-grams; discounts %s",
        order, len(corpus), "/".join(str(len(p)) for p in log_probs),
        ", ".join("(" + ", ".join(f"{d:.2f}" for d in ds) + ")" for ds in discounts),
    )  # fmt: skip
    return NgramEstimate(order, tuple(log_probs), backoffs, discounts)


def write_arpa(
    estimate: NgramEstimate, path: str | Path, symbols: Sequence[str] | None = None
) -> None:
    """Writes ``estimate`` as an ARPA file (log10 values).

    Args:
        estimate: the n-gram.
        path: the ARPA file, gzip-compressed when its name ends in ``.gz`` (``lm.arpa.gz``,
            with no time stamp, so the same LM makes the same bytes); written atomically
            (:func:`asr.fileio.write_bytes_atomic`), so a crash leaves no partial LM.
        symbols: the word written for each id (a word LM); None writes the ids themselves
            (a token LM).

    Raises:
        ValueError: when a symbol is empty, holds whitespace or is a special (``<s>``...).
    """
    path = Path(path)
    if symbols is not None:
        bad = [w for w in symbols if not w or w != "".join(w.split()) or w in _NAMES.values()]
        if bad:
            raise ValueError(
                f"ARPA words must be non-empty, without spaces, not specials: {bad[:5]}"
            )

    def _word(token: int) -> str:
        if token in _NAMES:
            return _NAMES[token]
        return str(token) if symbols is None else symbols[token]

    log10s = [{g: p / math.log(10.0) for g, p in grams.items()} for grams in estimate.log_probs]
    if estimate.order > 1:  # <s> is a history (with a back-off weight), never predicted
        log10s[0][(BOS,)] = _NO_PROB
    lines = ["", "\\data\\"]
    lines += [f"ngram {n + 1}={len(g)}" for n, g in enumerate(log10s)]
    for n, grams in enumerate(log10s):
        lines += ["", f"\\{n + 1}-grams:"]
        for gram in sorted(grams, key=lambda g: tuple((w < 0, w) for w in g)):
            fields = [f"{grams[gram]:.6f}", " ".join(_word(w) for w in gram)]
            if gram in estimate.backoffs:  # a history: shorter than the order, by construction
                fields.append(f"{estimate.backoffs[gram] / math.log(10.0):.6f}")
            lines.append("\t".join(fields))
    lines += ["", "\\end\\", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "\n".join(lines).encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    write_bytes_atomic(path, data)
