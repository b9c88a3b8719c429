"""Token language models for shallow fusion, and a back-off n-gram read from an ARPA file.

:class:`LanguageModel` is the one interface searchers use: an initial state, the log-probability
of every next token given a state, the state after a token, and the end-of-sentence
log-probability. States are hashable (searchers key hypotheses and caches on them).

:class:`NgramLM` is a Katz-style back-off n-gram in the ARPA format (Katz 1987, "Estimation of
probabilities from sparse data for the language model component of a speech recognizer"; the
format of the SRILM / KenLM / kaldilm tools), pure Python + torch:

``log P(w | h) = log p(h, w)`` if the n-gram ``h w`` is listed, else
``backoff(h) + log P(w | h[1:])``, down to the unigram; ARPA stores log10 values, converted to
natural logs here. The words of the ARPA file are token ids written as integers (an n-gram over
the ids a tokenizer produces), or symbols mapped to ids with ``symbol_to_id``; ``<s>``, ``</s>``
and ``<unk>`` are the usual specials (a token missing from the unigrams takes ``<unk>``'s
probability, or ``oov_log_prob`` without ``<unk>``).

Shape legend: V vocabulary incl. blank (blank's entry is never used by a searcher).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["LanguageModel", "NgramLM", "fusion_lm"]

logger = logging.getLogger(__name__)

LN10 = math.log(10.0)
BOS, EOS, UNK = -1, -2, -3
_SPECIALS = {"<s>": BOS, "</s>": EOS, "<unk>": UNK}


@runtime_checkable
class LanguageModel(Protocol):
    """A left-to-right token LM for shallow fusion."""

    vocab_size: int

    def init_state(self) -> Hashable:
        """State at the start of a sentence."""
        ...

    def score(self, state: Hashable) -> Tensor:
        """(V,) float32 natural-log probabilities of each next token id given ``state``."""
        ...

    def advance(self, state: Hashable, token: int) -> Hashable:
        """The state after ``token``."""
        ...

    def final_score(self, state: Hashable) -> float:
        """Natural-log probability of the end of sentence given ``state``."""
        ...


def fusion_lm(
    lm: LanguageModel | None, lm_weight: float, vocab_size: int, head_name: str
) -> LanguageModel | None:
    """The LM a searcher should fuse: ``lm`` when given with ``lm_weight > 0``, else None.

    Warns when a weight is set without an LM.

    Raises:
        ValueError: when the LM's vocabulary differs from the head's (``vocab_size``).
    """
    if lm is None:
        if lm_weight > 0:
            logger.warning("search.lm_weight=%g but no LM (search.lm_path) is given", lm_weight)
        return None
    if lm.vocab_size != vocab_size:
        raise ValueError(f"LM vocabulary {lm.vocab_size} differs from the {head_name}'s {vocab_size}")
    return lm if lm_weight > 0 else None


class NgramLM:
    """Back-off token n-gram from an ARPA file (see the module docstring).

    Args:
        probs: n-gram (tuple of word ids, specials negative) -> natural-log probability.
        backoffs: n-gram -> natural-log back-off weight (missing = 0).
        vocab_size: V, the number of token ids (including blank).
        oov_log_prob: log-probability of a token absent from the unigrams when there is no
            ``<unk>``.
        cache_limit: the most (V,) score vectors kept (the cache is emptied when it grows
            past it); None keeps every one (token LMs: V is small).
    """

    def __init__(
        self,
        probs: Mapping[tuple[int, ...], float],
        backoffs: Mapping[tuple[int, ...], float],
        vocab_size: int,
        oov_log_prob: float = -23.0,
        cache_limit: int | None = None,
    ) -> None:
        if not probs:
            raise ValueError("NgramLM: no n-grams")
        self.vocab_size = vocab_size
        self.order = max(len(gram) for gram in probs)
        self.probs = dict(probs)
        self.backoffs = dict(backoffs)
        bad = sorted({w for gram in probs for w in gram if w >= vocab_size})
        if bad:
            raise ValueError(
                f"NgramLM: token ids {bad[:5]} are outside the vocabulary of {vocab_size}"
            )
        self.unk_log_prob = self.probs.get((UNK,), oov_log_prob)
        self._successors: dict[tuple[int, ...], list[tuple[int, float]]] = {}
        for gram, log_prob in self.probs.items():
            if gram[-1] >= 0:
                self._successors.setdefault(gram[:-1], []).append((gram[-1], log_prob))
        self._cache: dict[tuple[int, ...], Tensor] = {}
        self.cache_limit = cache_limit

    @classmethod
    def from_arpa(
        cls,
        path: str | Path,
        vocab_size: int,
        symbol_to_id: Mapping[str, int] | None = None,
        oov_log_prob: float = -23.0,
    ) -> NgramLM:
        """Reads an ARPA file whose words are token ids (or symbols in ``symbol_to_id``)."""
        probs: dict[tuple[int, ...], float] = {}
        backoffs: dict[tuple[int, ...], float] = {}
        order = 0
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                line = line.strip()
                if not line or line.startswith("ngram ") or line == "\\data\\":
                    continue
                if line.startswith("\\"):
                    order = int(line[1:-7]) if line.endswith("-grams:") else 0
                    continue
                if order == 0:
                    continue
                fields = line.split()
                if len(fields) not in (order + 1, order + 2):
                    raise ValueError(f"{path}:{number}: expected a {order}-gram line, got {line!r}")
                gram = tuple(_word_id(w, symbol_to_id, path, number) for w in fields[1 : order + 1])
                probs[gram] = float(fields[0]) * LN10
                if len(fields) == order + 2:
                    backoffs[gram] = float(fields[-1]) * LN10
        logger.info("read a %d-gram LM with %d n-grams from %s", max(map(len, probs), default=0),
                    len(probs), path)
        return cls(probs, backoffs, vocab_size, oov_log_prob)

    def init_state(self) -> tuple[int, ...]:
        return self._reduce((BOS,))

    def advance(self, state: tuple[int, ...], token: int) -> tuple[int, ...]:
        return self._reduce(state + (int(token),))

    def log_prob(self, state: tuple[int, ...], word: int) -> float:
        """Natural-log ``P(word | state)`` with back-off (``word`` may be ``EOS``)."""
        total = 0.0
        history = state
        while True:
            value = self.probs.get(history + (word,))
            if value is not None:
                return total + value
            if not history:
                return total + self.unk_log_prob
            total += self.backoffs.get(history, 0.0)
            history = history[1:]

    def final_score(self, state: tuple[int, ...]) -> float:
        return self.log_prob(state, EOS)

    def score(self, state: tuple[int, ...]) -> Tensor:
        vector = self._cache.get(state)
        if vector is None:
            if state:
                vector = self.score(state[1:]) + self.backoffs.get(state, 0.0)
            else:
                vector = torch.full((self.vocab_size,), self.unk_log_prob)
            vector = vector.clone()
            for word, log_prob in self._successors.get(state, ()):
                vector[word] = log_prob
            if self.cache_limit is not None and len(self._cache) >= self.cache_limit:
                self._cache.clear()
            self._cache[state] = vector
        return vector

    def _reduce(self, history: tuple[int, ...]) -> tuple[int, ...]:
        """The longest suffix of ``history`` (at most order - 1 words) listed as an n-gram:
        a history that is not an n-gram has no successors and back-off weight 0."""
        history = history[max(0, len(history) - (self.order - 1)) :] if self.order > 1 else ()
        while history and history not in self.probs:
            history = history[1:]
        return history


def _word_id(word: str, symbol_to_id: Mapping[str, int] | None, path, number: int) -> int:
    if word in _SPECIALS:
        return _SPECIALS[word]
    if symbol_to_id is not None:
        if word not in symbol_to_id:
            raise ValueError(f"{path}:{number}: word {word!r} is not in the symbol table")
        return int(symbol_to_id[word])
    try:
        return int(word)
    except ValueError:
        raise ValueError(
            f"{path}:{number}: word {word!r} is not a token id; pass symbol_to_id"
        ) from None
