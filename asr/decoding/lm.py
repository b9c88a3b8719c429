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
the ids a tokenizer produces), or symbols mapped to ids with ``symbol_to_id``, or words numbered
in the order of the unigram section (:meth:`NgramLM.from_word_arpa`, a word LM); one checked
reader serves all three, and reads a gzip-compressed file (``lm.arpa.gz``, told by its first
bytes, whatever its name: :func:`asr.fileio.open_maybe_gzip`) as KenLM and icefall do. ``<s>``,
``</s>`` and ``<unk>`` are the usual specials. A token missing from the unigrams is ``<unk>``,
as KenLM maps an unknown word: its probability is ``<unk>``'s after the longest listed history
(``h <unk>`` when listed, else backing off as for any word), and the state after it has
``<unk>`` in its history; without ``<unk>`` in the file it gets ``oov_log_prob`` after the
back-off weights.
An n-gram whose history is not listed itself (SRILM's pruning leaves such files) is reached all
the same: its history and every prefix of it are states with back-off weight 0, as KenLM
completes them.

Shape legend: V vocabulary incl. blank (blank's entry is never used by a searcher).
"""

from __future__ import annotations

import gzip
import logging
import math
import zlib
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from asr.config import config_path_hint
from asr.fileio import open_maybe_gzip
from asr.tokenizers.base import check_text

__all__ = ["LanguageModel", "NgramLM", "fusion_lm"]

logger = logging.getLogger(__name__)

LN10 = math.log(10.0)
BOS, EOS, UNK = -1, -2, -3
#: Memory for the cached (V,) float32 score vectors of an :class:`NgramLM`.
CACHE_BYTES = 256 * 2**20
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
        raise ValueError(
            f"LM vocabulary {lm.vocab_size} differs from the {head_name}'s {vocab_size}"
        )
    return lm if lm_weight > 0 else None


def check_lm_file(path: str | Path | None, hint: bool = True) -> None:
    """Refuses a ``search.lm_path`` that names no file, before the work that would read it (the
    one check of ``asr export-package``, of ``asr train --decode-arg`` and of a searcher that
    loads its LM, :func:`asr.decoding.registry.build_searcher`); ``None``: no LM.
    Its format is checked by the reader (:meth:`NgramLM.from_arpa`), when the LM is loaded.

    Args:
        path: the LM file, or None.
        hint: for a relative path not found, name the working directory it was looked for in
            (:func:`asr.config.config_path_hint`, as every other path of a config); False for
            a caller that says where itself (a recipe naming the stage that makes the LM).

    Raises:
        ValueError: naming ``search.lm_path`` and the path.
    """
    if path is not None and not Path(path).is_file():
        where = config_path_hint("search.lm_path", path) if hint else ""
        raise ValueError(f"search.lm_path {path}: no such LM file{where}")


class NgramLM:
    """Back-off token n-gram from an ARPA file (see the module docstring).

    Args:
        probs: n-gram (tuple of word ids, specials negative) -> natural-log probability.
        backoffs: n-gram -> natural-log back-off weight (missing = 0).
        vocab_size: V, the number of token ids (including blank).
        oov_log_prob: log-probability of a token absent from the unigrams when there is no
            ``<unk>`` (with one, such a token is ``<unk>``: module docstring).
        cache_bytes: memory for cached (V,) score vectors, one per LM state scored: the
            cache keeps ``cache_limit = max(16, cache_bytes // (4 V))`` of them and is emptied
            when it grows past that (a server scores new states for as long as it runs).
    """

    def __init__(
        self,
        probs: Mapping[tuple[int, ...], float],
        backoffs: Mapping[tuple[int, ...], float],
        vocab_size: int,
        oov_log_prob: float = -23.0,
        cache_bytes: int = CACHE_BYTES,
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
        # the 1-grams are the vocabulary (KenLM refuses a word seen only in longer n-grams): a
        # token outside them is <unk> (or oov_log_prob) in log_prob but would keep its n-grams'
        # scores in score(), two LMs in one search
        stray = sorted({w for gram in self.probs if len(gram) > 1 for w in gram
                        if w >= 0 and (w,) not in self.probs})
        if stray:
            raise ValueError(f"NgramLM: token ids {stray[:5]} are in longer n-grams but no "
                             "unigram; the 1-grams must list every token (as KenLM requires)")
        self.unk_log_prob = self.probs.get((UNK,), oov_log_prob)
        # the token ids that are no unigram: <unk> when the file lists it (as KenLM maps them)
        self._has_unk = (UNK,) in self.probs
        self._oov = torch.tensor(
            [t for t in range(vocab_size) if (t,) not in self.probs], dtype=torch.long)
        self._unk_successors = {gram[:-1]: log_prob for gram, log_prob in self.probs.items()
                                if gram[-1] == UNK and len(gram) > 1 and self._has_unk}
        self._successors: dict[tuple[int, ...], list[tuple[int, float]]] = {}
        # every history an n-gram extends, and every prefix of it: one missing from the n-grams
        # of its order (a pruned SRILM file) is still a state, with back-off weight 0, as KenLM
        # completes such files (else the state drops its first words before the n-gram's turn)
        self._contexts: set[tuple[int, ...]] = set()
        for gram in self.probs:
            history = gram[:-1]
            while history and history not in self._contexts:
                self._contexts.add(history)
                history = history[:-1]
        for gram, log_prob in self.probs.items():
            if gram[-1] >= 0:
                self._successors.setdefault(gram[:-1], []).append((gram[-1], log_prob))
        self._cache: dict[tuple[int, ...], Tensor] = {}
        self.cache_limit = cache_limit_for(cache_bytes, vocab_size)

    @classmethod
    def from_arpa(
        cls,
        path: str | Path,
        vocab_size: int,
        symbol_to_id: Mapping[str, int] | None = None,
        oov_log_prob: float = -23.0,
    ) -> NgramLM:
        """Reads an ARPA file whose words are token ids (or symbols in ``symbol_to_id``),
        plain or gzip-compressed.

        Raises:
            ValueError: naming the file (and the line) when it is not a complete ARPA file: no
                ``\\data\\`` counts, orders that skip one, a section whose entries differ from
                its count (a truncated file), a field that is no number, NaN or +inf, a positive
                log10 probability, an n-gram listed twice, a word that is no token id (a
                negative integer neither), a token of a longer n-gram that is no unigram (as
                KenLM refuses it), no ``\\end\\``, or corrupt or truncated gzip data.
        """
        probs, backoffs = _read_arpa(path, lambda word, _: _word_id(word, symbol_to_id))
        return cls._checked(path, probs, backoffs, vocab_size, oov_log_prob)

    @classmethod
    def from_word_arpa(cls, path: str | Path, oov_log_prob: float = -23.0
                       ) -> tuple[NgramLM, list[str]]:
        """Reads an ARPA file whose words are written out (a word LM), numbering the words in
        the order of its unigram section (``<s>``, ``</s>`` and ``<unk>`` are the specials).

        Returns:
            ``(lm, words)``: the n-gram over word ids and the word of each id.

        Raises:
            ValueError: naming the file and line as :meth:`from_arpa` does, when a word
                of a higher-order n-gram is not in the unigram section, and for a word that
                writes the tokenizers' word-boundary mark ``▁``
                (:func:`asr.tokenizers.base.check_text`: no tokenizer spells it).
        """
        words: list[str] = []
        ids: dict[str, int] = {}

        def word_id(word: str, order: int) -> int:
            if word in _SPECIALS:
                return _SPECIALS[word]
            if word not in ids:
                if order != 1:
                    raise _LineError(f"word {word!r} is not in the 1-grams section")
                try:  # as read_transcripts checks a sentence: refused here, at its line
                    check_text(word)
                except ValueError as err:
                    raise _LineError(str(err)) from None
                ids[word] = len(words)
                words.append(word)
            return ids[word]

        probs, backoffs = _read_arpa(path, word_id)
        return cls._checked(path, probs, backoffs, len(words), oov_log_prob), words

    @classmethod
    def _checked(cls, path: str | Path, probs: Mapping[tuple[int, ...], float],
                 backoffs: Mapping[tuple[int, ...], float], vocab_size: int,
                 oov_log_prob: float) -> NgramLM:
        """The LM of the n-grams read from ``path``; its errors name the file."""
        logger.info("read a %d-gram LM with %d n-grams from %s", max(map(len, probs), default=0),
                    len(probs), path)
        try:
            return cls(probs, backoffs, vocab_size, oov_log_prob)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def init_state(self) -> tuple[int, ...]:
        return self._reduce((BOS,))

    def advance(self, state: tuple[int, ...], token: int) -> tuple[int, ...]:
        return self._reduce(state + (self._known(int(token)),))

    def log_prob(self, state: tuple[int, ...], word: int) -> float:
        """Natural-log ``P(word | state)`` with back-off (``word`` may be ``EOS``)."""
        word = self._known(word)
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
            unk = self._unk_successors.get(state)
            if unk is not None:  # "state <unk>" is listed: every token that is no unigram
                vector[self._oov] = unk
            if len(self._cache) >= self.cache_limit:
                self._cache.clear()
            self._cache[state] = vector
        return vector

    def _known(self, token: int) -> int:
        """``token``, or ``UNK`` for a token id that is no unigram when the file lists
        ``<unk>`` (KenLM's mapping of an unknown word)."""
        if self._has_unk and token >= 0 and (token,) not in self.probs:
            return UNK
        return token

    def _reduce(self, history: tuple[int, ...]) -> tuple[int, ...]:
        """The longest suffix of ``history`` (at most order - 1 words) listed as an n-gram or
        extended by one: a shorter one has no successors and back-off weight 0."""
        history = history[max(0, len(history) - (self.order - 1)) :] if self.order > 1 else ()
        while history and history not in self.probs and history not in self._contexts:
            history = history[1:]
        return history


def cache_limit_for(cache_bytes: int, vocab_size: int) -> int:
    """How many (``vocab_size``,) float32 score vectors :class:`NgramLM` caches in
    ``cache_bytes`` (at least 16)."""
    return max(16, cache_bytes // (4 * max(1, vocab_size)))


class _LineError(ValueError):
    """What is wrong with one line of an ARPA file (:func:`_read_arpa` adds the file and line)."""


def _read_arpa(
    path: str | Path, word_id: Callable[[str, int], int]
) -> tuple[dict[tuple[int, ...], float], dict[tuple[int, ...], float]]:
    """The natural-log probabilities and back-off weights of an ARPA file, checked against its
    ``\\data\\`` counts as KenLM checks them (so a truncated file is an error, not a smaller LM).

    ``word_id(word, order)`` is the id of a word of an ``order``-gram; it raises
    :class:`_LineError` for a word it does not know (reported with the file and line)."""
    probs: dict[tuple[int, ...], float] = {}
    backoffs: dict[tuple[int, ...], float] = {}
    declared: dict[int, int] = {}  # order -> count in the \data\ section
    found: dict[int, int] = {}  # order -> entries read
    section: str | None = None  # None before \data\, then "data", "grams" or "end"
    order = number = 0
    # a byte-order mark is dropped (utf-8-sig), being no text
    with open_maybe_gzip(path, "rt", encoding="utf-8-sig") as f:
        try:
            for number, raw in enumerate(f, start=1):
                line = raw.strip()
                # text before \data\ is no part of the LM, whatever it holds (the CMU-Cambridge
                # toolkit's preamble shows the format, \1-grams: lines too), as SRILM reads it
                if not line or section == "end" or (section is None and line != "\\data\\"):
                    continue
                try:
                    if line == "\\data\\":
                        section = "data"
                    elif line.startswith("\\"):
                        _check_count(order, found, declared)
                        section, order = _section(line, declared, found)
                    elif section == "data":
                        n, count = _declared_count(line)
                        declared[n] = count
                    elif section == "grams":
                        _read_entry(line, order, word_id, probs, backoffs)
                        found[order] += 1
                except _LineError as err:
                    raise ValueError(f"{path}:{number}: {err}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}:{number + 1}: not UTF-8 text; not an ARPA file") from None
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: corrupt or truncated gzip data after {number} lines "
                             f"({err}); not a complete ARPA file") from None
    if section is None:
        raise ValueError(f"{path}: no \\data\\ section; not an ARPA file")
    if section != "end":
        try:
            _check_count(order, found, declared)
        except _LineError as err:
            raise ValueError(f"{path}:{number}: {err}") from None
        raise ValueError(f"{path}: no \\end\\ after line {number} (truncated file?)")
    missing = sorted(set(declared) - set(found))
    if missing:
        raise ValueError(f"{path}: \\data\\ declares {missing[0]}-grams but has no such section")
    if sorted(declared) != list(range(1, len(declared) + 1)):
        raise ValueError(f"{path}: \\data\\ declares the orders {sorted(declared)}; an N-gram "
                         f"file has every order from 1 to N")
    return probs, backoffs


def _declared_count(line: str) -> tuple[int, int]:
    """``ngram N=COUNT`` -> (N, COUNT)."""
    key, _, value = line.partition("=")
    order = key[len("ngram "):].strip() if key.startswith("ngram ") else ""
    if not order.isdigit() or not value.strip().isdigit():
        raise _LineError(f"expected 'ngram N=COUNT' in \\data\\, got {line!r}")
    return int(order), int(value)


def _section(line: str, declared: dict[int, int], found: dict[int, int]) -> tuple[str, int]:
    """The section a ``\\N-grams:`` or ``\\end\\`` line starts: ("grams", N) or ("end", 0)."""
    if line == "\\end\\":
        return "end", 0
    head = line[1 : -len("-grams:")] if line.endswith("-grams:") else ""
    if not head.isdigit() or int(head) not in declared:
        raise _LineError(f"unexpected section {line!r} (\\data\\ declares the orders "
                         f"{sorted(declared)})")
    if int(head) in found:
        raise _LineError(f"a second {head}-grams section")
    found[int(head)] = 0
    return "grams", int(head)


def _check_count(order: int, found: dict[int, int], declared: dict[int, int]) -> None:
    """At the end of the ``order``-grams section (none when 0): its count is the declared one."""
    if order and found[order] != declared[order]:
        raise _LineError(f"the {order}-grams section has {found[order]} entries but \\data\\ "
                         f"declares {declared[order]} (truncated or edited file?)")


def _read_entry(
    line: str,
    order: int,
    word_id: Callable[[str, int], int],
    probs: dict[tuple[int, ...], float],
    backoffs: dict[tuple[int, ...], float],
) -> None:
    """Adds one ``log10_prob w_1 .. w_order [log10_backoff]`` line of an n-gram section."""
    fields = line.split()
    if len(fields) not in (order + 1, order + 2):
        raise _LineError(f"expected a {order}-gram line, got {line!r}")
    try:
        values = [float(fields[0])] + [float(v) for v in fields[order + 1 :]]
    except ValueError:
        raise _LineError(
            f"a log10 probability or back-off weight that is no number: {line!r}"
        ) from None
    if values[0] > 0.0:
        raise _LineError(
            f"positive log10 probability {fields[0]} (a probability above 1): {line!r}"
        )
    if any(math.isnan(v) or v == math.inf for v in values):
        raise _LineError(f"a log10 probability or back-off weight that is NaN or +inf: {line!r}")
    gram = tuple(word_id(w, order) for w in fields[1 : order + 1])
    if gram in probs:
        raise _LineError(f"the {order}-gram {' '.join(fields[1 : order + 1])!r} is listed twice")
    probs[gram] = values[0] * LN10
    if len(values) == 2:
        backoffs[gram] = values[1] * LN10


def _word_id(word: str, symbol_to_id: Mapping[str, int] | None) -> int:
    if word in _SPECIALS:
        return _SPECIALS[word]
    if symbol_to_id is not None:
        if word not in symbol_to_id:
            raise _LineError(f"word {word!r} is not in the symbol table")
        return int(symbol_to_id[word])
    try:
        token = int(word)
    except ValueError:
        token = -1
    if token < 0:
        raise _LineError(f"word {word!r} is not a token id (a token LM's words are the ids that "
                         "'asr lm --unit token' writes); for an LM over words (asr lm --unit "
                         "word) set search.lm_unit=word")
    return token
