"""A word n-gram as a token LM: lexicon-constrained shallow fusion.

:class:`LexiconWordLM` turns a word-level :class:`~asr.decoding.lm.NgramLM` (an ARPA file whose
words are written out, as ``asr lm --unit word`` trains) into the token-level
:class:`~asr.decoding.lm.LanguageModel` every fusing searcher takes. The lexicon is the LM's
vocabulary, each word spelled with the tokenizer's own pieces (its first piece starts with the
word-start mark ``▁``, the others do not). This is what decoding with an ``LG`` graph gives in
k2/icefall, without a graph:

* **Only lexicon words.** A token that would spell something outside the lexicon gets
  log-probability ``-inf``, so a hypothesis is always a sequence of lexicon words (and ``</s>``
  is only allowed after a whole word).
* **Word probabilities spread over their pieces.** Within a word, token ``t`` after the prefix
  ``p`` of the current word, with word history ``h``, gets the look-ahead ratio
  ``log M_h(p t) - log M_h(p)``, where ``M_h(q)`` is the total ``P(w | h)`` of the lexicon words
  spelled with the prefix ``q`` (``M_h`` of the empty prefix is 1). A word-start token closes
  the word ``w`` spelled by ``p`` (factor ``P(w | h) / M_h(p)``) and opens the next one under
  history ``h w``. The factors telescope: the token scores of a sentence's spelling plus
  :meth:`LexiconWordLM.final_score` sum to the word LM's ``log P(w_1 .. w_n </s>)``, so the LM's
  weight means the same as for a word LM in rescoring, and the score a hypothesis carries in the
  middle of a word is the best estimate available there (Ortmanns et al. 1996, "Language-model
  look-ahead for large vocabulary speech recognition").

States are ``(word LM state, pieces of the current word so far)``; a state reached by a token the
lexicon does not allow is dead (every score ``-inf``).

Shape legend: V token vocabulary incl. blank; W lexicon words.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from asr.decoding.lm import CACHE_BYTES, NgramLM, cache_limit_for
from asr.tokenizers.base import WORD_START

__all__ = ["LexiconWordLM", "arpa_words", "load_word_lm"]

logger = logging.getLogger(__name__)

_DEAD = None
_SCORE_CACHE = 4096  # (V,) token score vectors kept (V is a tokenizer's size: small)


@dataclass(frozen=True)
class _Node:
    """The lexicon words spelled with one piece prefix: ``words[lo:hi]`` in lexicon order.

    ``end`` is the lexicon index of the word spelled exactly by the prefix, -1 if none.
    """

    lo: int
    hi: int
    end: int


def arpa_words(path: str | Path) -> list[str]:
    """The words of an ARPA file's unigram section, in file order, without ``<s>``,
    ``</s>`` and ``<unk>`` (the file is read whole by :meth:`NgramLM.from_word_arpa`).

    Raises:
        ValueError: naming the file and line when it is not a complete ARPA file (the checks
            of :meth:`NgramLM.from_arpa`).
    """
    return NgramLM.from_word_arpa(path)[1]


class LexiconWordLM:
    """A word n-gram over a lexicon, scored token by token (see the module docstring).

    Args:
        word_lm: n-gram over word ids ``0 .. len(words) - 1``.
        words: the word of each id.
        tokenizer: spells the words (``encode``, ``id_to_piece``, ``vocab_size``,
            ``unk_id``).
        cache_bytes: memory for cached word probability vectors (8 W bytes per word LM state
            here, 4 W in the word n-gram's own cache), so a large lexicon keeps fewer states.

    Raises:
        ValueError: when no word of the LM can be spelled with the tokenizer's pieces.
    """

    def __init__(
        self,
        word_lm: NgramLM,
        words: Sequence[str],
        tokenizer,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.word_lm = word_lm
        self.vocab_size = int(tokenizer.vocab_size)
        pieces = [tokenizer.id_to_piece(i) for i in range(self.vocab_size)]
        self._starts = torch.tensor([p.startswith(WORD_START) for p in pieces])
        unk_id = getattr(tokenizer, "unk_id", None)
        spelled: dict[tuple[int, ...], int] = {}
        skipped: list[str] = []
        for word_id, word in enumerate(words):
            ids = tuple(int(t) for t in tokenizer.encode(word))
            valid = (
                bool(ids)
                and unk_id not in ids
                and bool(self._starts[ids[0]])
                and not any(bool(self._starts[t]) for t in ids[1:])
            )
            if not valid or ids in spelled:
                skipped.append(word)
                continue
            spelled[ids] = word_id
        if not spelled:
            raise ValueError(
                f"none of the word LM's {len(words)} words can be spelled with the tokenizer: a "
                f"word must be spelled as one piece starting with {WORD_START!r} and pieces "
                "without it (sentencepiece BPE; the char tokenizer puts the mark between words "
                "and is not supported)"
            )
        if skipped:
            logger.warning(
                "lexicon: %d of %d words skipped (not spelled as one word of known pieces, or "
                "spelled like another word): %s",
                len(skipped), len(words), " ".join(skipped[:10]),
            )  # fmt: skip
        self._spellings = sorted(spelled)  # lexicon order: by piece ids
        self._word_ids = torch.tensor([spelled[s] for s in self._spellings])  # (W,)
        self.words = [words[spelled[s]] for s in self._spellings]
        depth = max(len(s) for s in self._spellings)
        self._pieces = torch.full((len(self._spellings), depth + 1), -1, dtype=torch.long)
        for row, spelling in enumerate(self._spellings):
            self._pieces[row, : len(spelling)] = torch.tensor(spelling)
        self._nodes: dict[tuple[int, ...], _Node] = {}
        self._cache_size = max(16, min(4096, cache_bytes // (8 * len(self.words))))
        word_lm.cache_limit = cache_limit_for(cache_bytes, word_lm.vocab_size)
        self._probs: OrderedDict[Hashable, Tensor] = OrderedDict()
        self._scores: OrderedDict[Hashable, Tensor] = OrderedDict()
        logger.info("lexicon of %d words, at most %d pieces each", len(self.words), depth)

    # -- LanguageModel ---------------------------------------------------------------------

    def init_state(self) -> Hashable:
        return (self.word_lm.init_state(), ())

    def advance(self, state: Hashable, token: int) -> Hashable:
        if state is _DEAD:
            return _DEAD
        history, prefix = state
        token = int(token)
        if not 0 <= token < self.vocab_size:
            return _DEAD
        if bool(self._starts[token]):
            if prefix:
                node = self._node(prefix)
                if node is None or node.end < 0:
                    return _DEAD
                history = self.word_lm.advance(history, int(self._word_ids[node.end]))
            next_prefix: tuple[int, ...] = (token,)
        else:
            if not prefix:
                return _DEAD
            next_prefix = prefix + (token,)
        return (history, next_prefix) if self._node(next_prefix) is not None else _DEAD

    def score(self, state: Hashable) -> Tensor:
        """(V,) float32 log-probabilities of the next token (``-inf`` where the lexicon forbids
        it)."""
        if state is _DEAD:
            return torch.full((self.vocab_size,), -math.inf)
        cached = self._scores.get(state)
        if cached is not None:
            self._scores.move_to_end(state)
            return cached
        history, prefix = state
        if not prefix:
            vector = self._root_scores(history)
        else:
            node = self._node(prefix)
            assert node is not None
            probs = self._word_probs(history)
            mass = float(probs[node.lo : node.hi].sum())
            vector = torch.full((self.vocab_size,), -math.inf, dtype=torch.float64)
            if mass > 0.0:
                within = self._child_masses(probs, node, len(prefix))
                vector = torch.where(within > 0, within.log() - math.log(mass), vector)
                closing = self._close(history, node, probs, mass)
                if closing is not None:
                    close, after = closing
                    vector = torch.where(self._starts, close + self._root_scores(after), vector)
        vector = vector.to(torch.float32)
        self._remember(self._scores, state, vector, _SCORE_CACHE)
        return vector

    def final_score(self, state: Hashable) -> float:
        if state is _DEAD:
            return -math.inf
        history, prefix = state
        if not prefix:
            return self.word_lm.final_score(history)
        node = self._node(prefix)
        if node is None or node.end < 0:
            return -math.inf
        probs = self._word_probs(history)
        closing = self._close(history, node, probs, float(probs[node.lo : node.hi].sum()))
        if closing is None:
            return -math.inf
        close, after = closing
        return close + self.word_lm.final_score(after)

    # -- internals -------------------------------------------------------------------------

    def _node(self, prefix: tuple[int, ...]) -> _Node | None:
        node = self._nodes.get(prefix)
        if node is None:
            lo = bisect.bisect_left(self._spellings, prefix)
            hi = bisect.bisect_left(self._spellings, prefix + (self.vocab_size,))
            if lo == hi:
                return None
            end = lo if self._spellings[lo] == prefix else -1
            node = self._nodes[prefix] = _Node(lo, hi, end)
        return node

    def _close(
        self, history: Hashable, node: _Node, probs: Tensor, mass: float
    ) -> tuple[float, Hashable] | None:
        """Ending the word spelled by ``node``: ``log P(w | history) / M(node)`` (``mass``) and
        the word LM state after ``w``; None if the prefix is no whole word or ``w`` has
        probability 0."""
        if node.end < 0 or probs[node.end] <= 0:
            return None
        after = self.word_lm.advance(history, int(self._word_ids[node.end]))
        return math.log(float(probs[node.end]) / mass), after

    def _word_probs(self, history: Hashable) -> Tensor:
        """(W,) float64 ``P(w | history)`` in lexicon order."""
        probs = self._probs.get(history)
        if probs is None:
            log_probs = self.word_lm.score(history).to(torch.float64)
            probs = log_probs[self._word_ids].exp()
            self._remember(self._probs, history, probs)
        else:
            self._probs.move_to_end(history)
        return probs

    def _child_masses(self, probs: Tensor, node: _Node, depth: int) -> Tensor:
        """(V,) float64 total probability of the words under ``node`` by their next piece."""
        pieces = self._pieces[node.lo : node.hi, depth]
        inside = pieces >= 0
        masses = torch.zeros(self.vocab_size, dtype=torch.float64)
        return masses.index_add_(0, pieces[inside], probs[node.lo : node.hi][inside])

    def _root_scores(self, history: Hashable) -> Tensor:
        """(V,) float64 ``log M_history(t)`` for every first piece ``t``."""
        masses = self._child_masses(self._word_probs(history), _Node(0, len(self.words), -1), 0)
        return torch.where(masses > 0, masses.log(), torch.full_like(masses, -math.inf))

    def _remember(
        self, cache: OrderedDict, key: Hashable, value: Tensor, size: int | None = None
    ) -> None:
        cache[key] = value
        if len(cache) > (self._cache_size if size is None else size):
            cache.popitem(last=False)


def load_word_lm(path: str | Path, tokenizer) -> LexiconWordLM:
    """Reads a word-level ARPA file (words written out) and spells its words with ``tokenizer``."""
    lm, words = NgramLM.from_word_arpa(path)
    if not words:
        raise ValueError(f"{path}: the word LM lists no words")
    return LexiconWordLM(lm, words, tokenizer)
