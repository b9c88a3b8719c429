"""Contextual biasing (hotwords): an Aho-Corasick automaton over token ids whose partial matches
are boosted and whose failed partial matches give their boost back.

The icefall / sherpa-onnx scheme (Aho & Corasick 1975, "Efficient string matching"; the k2
``ContextGraph`` of icefall and sherpa-onnx's ``context-graph.cc``): the phrases are tokenized
with the model's tokenizer and put in a trie; every trie edge carries a per-token boost (the
phrase's own boost, else ``hotwords_score``; an edge shared by several phrases takes the
largest), and every node ``s`` the sum ``phi(s)`` of the boosts on its path from the root. A
searcher carries one graph state per hypothesis (an int, the node of the longest suffix of its
tokens that is a prefix of some phrase) and, for every token it emits, adds

``delta(s, v) = phi(s') - phi(s) + out(s')``  with ``s' = next(s, v)``,

where ``next`` follows the trie edge if there is one, else the failure links (Aho-Corasick), and
``out(s')`` is the boost of every phrase that ends at ``s'`` (the phrase of ``s'`` itself and
those on its output chain: phrases that are suffixes of it), a phrase's boost being
``phi`` of its end node. When the hypothesis ends, :meth:`ContextGraph.finalize` adds
``-phi(s)``. The sums telescope: a hypothesis' total bonus is the boost of every phrase
occurrence in its tokens (overlapping occurrences included), while during the search a partial
match holds the boost of its tokens so far, and a partial match that breaks gives back what it
no longer matches (``phi`` drops to that of the failure node). This is icefall's
``strict_mode=True``; the offline modified beam search of sherpa-onnx (``strict_mode=False``)
jumps back to the root after a complete match, which differs only where phrases overlap or
extend one another.

With ``unboosted_prefix = k`` the first k tokens of a phrase (at most all but its last) carry
no boost: they must still match, but a hypothesis gains nothing until the phrase's (k+1)-th
token, and a phrase's boost is that of its other tokens. A phrase's first BPE piece is often a
single letter that begins many words; boosting it pulls every such word toward the phrases'
spellings, which cost plain WER with a distractor list on the mini_tts model, and k = 1 kept
most of the recall (recipes/mini_tts/EXPERIMENTS.md). k = 0 is icefall's and sherpa-onnx's
boosting of every token.

Searchers add ``delta`` to the scores of their one-token expansions *before* pruning (the
transducer modified beam and the TDT beam add the (N, V) rows of :meth:`ContextGraph.deltas`
to their candidates; the CTC prefix beam to each extended prefix), so a boosted token can
enter the beam; blank adds nothing and keeps the state. The transitions are dense tables
``(S, V)`` (S graph states), so a batch of hypotheses moves with one gather.

Hotword lists (:func:`parse_hotwords`) use sherpa-onnx's text format, so one file serves both
runtimes: one phrase per line (or phrases separated by ``;`` / ``/`` when given inline), words
separated by spaces, optionally ending with `` :SCORE``, the phrase's per-token boost (at most
:data:`MAX_HOTWORD_SCORE` in magnitude, as ``hotwords_score``).

Shape legend: S graph states (trie nodes, root 0), V vocabulary incl. blank, N hypotheses.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from asr.config import config_path_hint
from asr.constants import MAX_HOTWORD_SCORE, hotword_score_problem, hotwords_file
from asr.decoding.config import SearchConfig
from asr.fileio import read_text
from asr.tokenizers.base import Tokenizer, check_text

__all__ = [
    "ContextGraph",
    "Hotword",
    "HotwordError",
    "MAX_HOTWORDS",
    "MAX_HOTWORD_SCORE",
    "MAX_HOTWORD_TOKENS",
    "as_hotwords",
    "context_graph_for",
    "hotwords_of",
    "load_hotwords",
    "parse_hotwords",
]

logger = logging.getLogger(__name__)

#: The most phrases one list may hold (a server stream's list included).
MAX_HOTWORDS = 10_000
#: The most tokens one phrase may take.
MAX_HOTWORD_TOKENS = 64
#: Characters that separate phrases given inline (``"ALPHA BETA;GAMMA"``); ``/`` is sherpa-onnx's.
INLINE_SEPARATORS = (";", "/", "\n")


class HotwordError(ValueError):
    """A hotword list that cannot be used (names the phrase and what is wrong)."""


def _check_boost(score: float, what: str) -> None:
    """Raises a HotwordError starting with ``what`` for a boost that
    :func:`asr.constants.hotword_score_problem` refuses."""
    problem = hotword_score_problem(score)
    if problem is not None:
        raise HotwordError(f"{what}: {problem}")


@dataclass(frozen=True)
class Hotword:
    """One phrase of a hotword list.

    Attributes:
        text: the words, single spaces between them.
        score: its per-token boost; None takes the list's default (``hotwords_score``).
    """

    text: str
    score: float | None = None


def parse_hotwords(
    text: str, separators: Sequence[str] = ("\n",), source: str | Path | None = None
) -> list[Hotword]:
    """Phrases of a hotword list in sherpa-onnx's format (see the module docstring).

    Args:
        text: the list: a file's content, or phrases joined by one of ``separators``.
        separators: what ends a phrase.
        source: the file ``text`` was read from (one phrase per line), which an error then
            names (with the line of a bad phrase).

    Raises:
        HotwordError: for a ``:SCORE`` that is not a finite number, is beyond
            :data:`MAX_HOTWORD_SCORE` in magnitude or comes before a word, a phrase that writes
            the tokenizers' word-boundary mark ``▁``
            (:func:`asr.tokenizers.base.check_text`), and for more than :data:`MAX_HOTWORDS`
            phrases.
    """
    for sep in separators[1:]:
        text = text.replace(sep, separators[0])
    hotwords = []
    for number, line in enumerate(text.split(separators[0]), start=1):
        try:
            hotword = _parse_phrase(line)
        except HotwordError as err:
            if source is None:
                raise
            raise HotwordError(f"hotwords file {source}:{number}: {err}") from None
        if hotword is not None:
            hotwords.append(hotword)
    if len(hotwords) > MAX_HOTWORDS:
        where = "" if source is None else f"hotwords file {source}: "
        raise HotwordError(f"{where}{len(hotwords)} hotwords: at most {MAX_HOTWORDS} are allowed")
    return hotwords


def _parse_phrase(line: str) -> Hotword | None:
    """The phrase of one line of a hotword list (None for a line without words).

    Raises:
        HotwordError: as :func:`parse_hotwords`, naming the phrase.
    """
    words, score = [], None
    for word in line.split():
        if word.startswith(":"):
            try:
                score = float(word[1:])
            except ValueError:
                raise HotwordError(f"hotword {line.strip()!r}: bad score {word!r}") from None
            if not math.isfinite(score):
                raise HotwordError(f"hotword {line.strip()!r}: bad score {word!r}")
        elif score is not None:
            raise HotwordError(f"hotword {line.strip()!r}: the :SCORE must come after the words")
        else:
            words.append(word)
    if not words:
        return None
    text = " ".join(words)
    try:  # as read_transcripts checks a sentence: refused where it is read
        check_text(text)
    except ValueError as err:
        raise HotwordError(f"hotword {text!r}: {err}") from None
    if score is not None:  # where it is read, too: a file's error then names the file and line
        _check_boost(score, f"hotword {text!r}: score {score:g}")
    return Hotword(text, score)


def load_hotwords(spec: str | Path) -> list[Hotword]:
    """A hotword list from a file (one phrase per line) when ``spec`` names one, else from the
    inline phrases of ``spec`` (``"ALPHA BETA;GAMMA :2.5"``).

    A file or text without a phrase gives none, with a warning (nothing will be biased).

    Raises:
        HotwordError: for a bad phrase (in a file: naming the file and line), or a ``spec``
            that names a ``.txt`` file that does not exist: read as phrases, its error would
            name a word of the path instead.
    """
    try:
        path = hotwords_file(spec)
    except ValueError as err:  # a .txt name that is no file
        raise HotwordError(str(err)) from None
    if path is not None:
        hotwords = parse_hotwords(read_text(path), source=path)
        if not hotwords:  # a wrong or unfinished file would bias nothing, unsaid
            logger.warning("hotwords file %s holds no phrases: nothing is biased", path)
        return hotwords
    text = str(spec)
    hotwords = parse_hotwords(text, INLINE_SEPARATORS)
    if not hotwords:
        logger.warning("hotwords %r hold no phrases: nothing is biased", text)
    return hotwords


class ContextGraph:
    """The Aho-Corasick automaton of a list of token sequences with dense transition tables.

    Args:
        phrases: the token ids of each phrase (non-empty, ids in ``[0, vocab_size)``, no blank).
        vocab_size: V.
        default_score: per-token boost of a phrase without its own.
        scores: per phrase its per-token boost or None; None for all defaults.
        blank_id: the blank id, whose transitions keep the state and add nothing.
        unboosted_prefix: the first this many tokens of a phrase (at most all but its last)
            carry no boost; they still have to match (module docstring).

    Attributes:
        next_state: (S, V) int64, the state after each token (blank: the same state).
        delta: (S, V) float32, the bonus of each token (blank: 0).
        final: (S,) float32, ``-phi(s)``: added when a hypothesis ends in state s.
    """

    def __init__(
        self,
        phrases: Sequence[Sequence[int]],
        vocab_size: int,
        default_score: float,
        scores: Sequence[float | None] | None = None,
        blank_id: int = 0,
        unboosted_prefix: int = 0,
    ) -> None:
        if unboosted_prefix < 0:
            raise ValueError(f"unboosted_prefix must be >= 0, got {unboosted_prefix}")
        if scores is not None and len(scores) != len(phrases):
            raise ValueError(f"{len(scores)} scores for {len(phrases)} phrases")
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.num_phrases = len(phrases)
        children: list[dict[int, int]] = [{}]
        edge: list[float] = [0.0]  # boost of the edge into each node
        is_end: list[bool] = [False]
        for index, phrase in enumerate(phrases):
            if not phrase:
                raise ValueError(f"phrase {index} has no tokens")
            score = default_score if scores is None or scores[index] is None else scores[index]
            node = 0
            free = min(unboosted_prefix, len(phrase) - 1)
            for depth, token in enumerate(phrase):
                if not 0 <= token < vocab_size or token == blank_id:
                    raise ValueError(f"phrase {index}: token id {token} is not a token")
                boost = 0.0 if depth < free else float(score)
                child = children[node].get(token)
                if child is None:
                    child = len(children)
                    children[node][token] = child
                    children.append({})
                    edge.append(boost)
                    is_end.append(False)
                else:
                    edge[child] = max(edge[child], boost)
                node = child
            is_end[node] = True
        num_states = len(children)
        phi = [0.0] * num_states
        fail = [0] * num_states
        out = [0.0] * num_states
        order = []  # breadth first: a node's failure target comes before it
        queue = deque(children[0].values())
        while queue:
            node = queue.popleft()
            order.append(node)
            queue.extend(children[node].values())
        parent_of = {child: (node, tok) for node in range(num_states)
                     for tok, child in children[node].items()}
        for node in order:
            parent, token = parent_of[node]
            phi[node] = phi[parent] + edge[node]
            if parent != 0:
                target = fail[parent]
                while token not in children[target] and target != 0:
                    target = fail[target]
                fail[node] = children[target].get(token, 0)
            # the boosts of the phrases ending here: its own, then those of its failure chain
            out[node] = (phi[node] if is_end[node] else 0.0) + out[fail[node]]
        next_state = torch.zeros(num_states, vocab_size, dtype=torch.int64)
        for token, child in children[0].items():
            next_state[0, token] = child
        for node in order:  # goto with failure links folded in (the automaton's delta function)
            next_state[node] = next_state[fail[node]]
            for token, child in children[node].items():
                next_state[node, token] = child
        next_state[:, blank_id] = torch.arange(num_states)
        phi_t = torch.tensor(phi, dtype=torch.float64)
        out_t = torch.tensor(out, dtype=torch.float64)
        delta = phi_t[next_state] - phi_t[:, None] + out_t[next_state]
        delta[:, blank_id] = 0.0
        self.next_state = next_state
        self.delta = delta.float()
        self.final = (-phi_t).float()
        self.phi = phi_t.float()
        self._device_tables: dict[torch.device, tuple[Tensor, Tensor]] = {}
        # Python copies for the per-hypothesis bookkeeping of the searchers
        self._next_rows = next_state.tolist()
        self._delta_rows = self.delta.tolist()
        self._final = self.final.tolist()

    @classmethod
    def from_hotwords(
        cls,
        hotwords: Sequence[Hotword],
        tokenizer: Tokenizer,
        default_score: float,
        unboosted_prefix: int = 0,
    ) -> ContextGraph:
        """Tokenizes ``hotwords`` with ``tokenizer`` and builds their graph (arguments as
        the constructor's).

        Raises:
            HotwordError: for a phrase with characters the tokenizer does not know (they would
                encode to ``<unk>``), longer than :data:`MAX_HOTWORD_TOKENS` tokens, or a boost
                (its own or ``default_score``) beyond :data:`MAX_HOTWORD_SCORE`.
        """
        if len(hotwords) > MAX_HOTWORDS:
            raise HotwordError(f"{len(hotwords)} hotwords: at most {MAX_HOTWORDS} are allowed")
        if hotwords:
            _check_boost(default_score, f"hotwords_score {default_score:g}")
        phrases = []
        for hotword in hotwords:
            if hotword.score is not None:
                _check_boost(hotword.score, f"hotword {hotword.text!r}: score {hotword.score:g}")
            try:
                ids = tokenizer.encode(hotword.text)
            except ValueError as err:  # a text no tokenizer takes (one that writes ▁)
                raise HotwordError(f"hotword {hotword.text!r}: {err}") from None
            if tokenizer.unk_id in ids:
                unknown = sorted({
                    ch for ch in hotword.text
                    if ch != " " and tokenizer.unk_id in tokenizer.encode(ch)
                })
                raise HotwordError(
                    f"hotword {hotword.text!r} has characters the model's tokenizer does not know: "
                    f"{''.join(unknown) or hotword.text!r} (check the case: the model writes e.g. "
                    f"{tokenizer.decode(range(3, min(tokenizer.vocab_size, 8)))!r})"
                )
            if len(ids) > MAX_HOTWORD_TOKENS:
                raise HotwordError(
                    f"hotword {hotword.text!r} is {len(ids)} tokens long: at most "
                    f"{MAX_HOTWORD_TOKENS} are allowed"
                )
            phrases.append(ids)
        return cls(
            phrases,
            tokenizer.vocab_size,
            default_score,
            [h.score for h in hotwords],
            tokenizer.blank_id,
            unboosted_prefix,
        )

    @property
    def num_states(self) -> int:
        """S."""
        return self.next_state.shape[0]

    def step(self, state: int, token: int) -> tuple[float, int]:
        """The bonus of emitting ``token`` in ``state`` and the state after it."""
        return self._delta_rows[state][token], self._next_rows[state][token]

    def finalize(self, state: int) -> float:
        """What a hypothesis ending in ``state`` adds: its unfinished partial match, given back."""
        return self._final[state]

    def tables(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(next_state, delta)`` on ``device`` (cached)."""
        if device not in self._device_tables:
            self._device_tables[device] = (self.next_state.to(device), self.delta.to(device))
        return self._device_tables[device]

    def deltas(self, states: Tensor) -> Tensor:
        """states (N,) int64 -> (N, V) float32 bonus of every one-token expansion."""
        return self.tables(states.device)[1][states]

    def advance(self, states: Tensor, tokens: Tensor) -> Tensor:
        """states (N,), tokens (N,) -> (N,) the states after the tokens (blank keeps them)."""
        return self.tables(states.device)[0][states, tokens]


def hotwords_of(cfg: SearchConfig) -> list[Hotword]:
    """The phrases of ``cfg.hotwords_file`` followed by those of ``cfg.hotwords`` (inline)."""
    hotwords = []
    if cfg.hotwords_file is not None:
        path = Path(cfg.hotwords_file)
        if not path.is_file():
            raise HotwordError(f"search.hotwords_file {path} does not exist"
                               f"{config_path_hint('search.hotwords_file', path)}")
        hotwords += parse_hotwords(read_text(path), source=path)
    if cfg.hotwords:
        hotwords += parse_hotwords(cfg.hotwords, INLINE_SEPARATORS)
    return hotwords


def as_hotwords(spec: str | Path | Sequence[str | Hotword] | None) -> list[Hotword]:
    """Phrases given in any of the ways the runtime takes them: a file, inline phrases
    (``"ALPHA BETA;GAMMA :2.5"``, :func:`load_hotwords`), or a list of phrases (each may end
    with `` :SCORE``) or of :class:`Hotword` (as they are, e.g. a file's, read once); None for
    none."""
    if spec is None:
        return []
    if isinstance(spec, (str, Path)):
        return load_hotwords(spec)
    return [h for phrase in spec
            for h in ([phrase] if isinstance(phrase, Hotword) else parse_hotwords(str(phrase)))]


def context_graph_for(
    cfg: SearchConfig,
    tokenizer: Tokenizer | None,
    hotwords: Sequence[Hotword] = (),
    hotwords_score: float | None = None,
) -> ContextGraph | None:
    """The hotword graph of ``cfg`` (``hotwords_file``, ``hotwords``, ``hotwords_score``,
    ``hotwords_unboosted_prefix``) with ``hotwords`` added, or None when there is no phrase.

    ``hotwords_score``, when given, replaces ``cfg.hotwords_score`` (a stream's own boost: the
    runtimes' ``hotwords_score=``, a server client's); it is checked, naming it
    ``hotwords_score``, phrases or not, as ``cfg``'s own was when ``cfg`` was made.

    Raises:
        HotwordError: for a list that cannot be used, phrases without a ``tokenizer``, or a
            ``hotwords_score`` beyond :data:`~asr.constants.MAX_HOTWORD_SCORE` in magnitude.
    """
    if hotwords_score is not None:
        _check_boost(hotwords_score, f"hotwords_score {hotwords_score:g}")
    hotwords = hotwords_of(cfg) + list(hotwords)
    if not hotwords:
        return None
    if tokenizer is None:
        raise HotwordError(
            "hotwords need the model's tokenizer (build_searcher(..., tokenizer=...))"
        )
    score = cfg.hotwords_score if hotwords_score is None else hotwords_score
    graph = ContextGraph.from_hotwords(hotwords, tokenizer, score, cfg.hotwords_unboosted_prefix)
    logger.info("hotword graph: %d phrases, %d states", graph.num_phrases, graph.num_states)
    return graph
