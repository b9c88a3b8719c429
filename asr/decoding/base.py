"""Searcher protocols and the small pieces shared by the searchers.

* :class:`Searcher`: ``enc (B, T, D), enc_lens (B,) -> list[list[Hypothesis]]`` (n-best, best
  first). Token ids exclude blank; ``Hypothesis.frames`` holds the encoder frame of each
  token for CTC/transducer/TDT searchers; ``text`` is left empty (the caller owns the tokenizer).
* :class:`StreamingSearcher`: ``init_state / step / partial / finalize`` over a frozen state
  dataclass whose tensors declare their batch dimension, so the generic
  :func:`asr.state.stack_states` / ``unstack_states`` / ``select_states`` batch
  streams that are at different positions.
* :class:`TokenBuffer`: the emitted tokens, their absolute frames and the score of each stream,
  held inside a streaming state (a stream's hypothesis must live in its state to be stacked
  with others): per stream a :class:`TokenRun`, which an append extends in place, amortised
  O(1), unless an older state's tokens are in the way (then it copies them once).
* :class:`TokenChain`: the tokens and token frames of a beam-search hypothesis as a persistent
  linked list (a node per token pointing at the tokens before it, shared by every hypothesis
  that extends them), so that an expansion, a merge key and its hash cost O(1) however many
  tokens a stream has decoded; the tuples are built only for a result.
* :class:`StreamBeam` and :class:`BeamState`: the beam of one stream of a streaming beam search
  (hypotheses as Python objects, the predictor rows, frames not yet searched, the stream's
  hotword graph) and the State that carries one per stream (:func:`asr.state.stream_field`).
* :func:`where_state`: per-row choice between two states of the same type (batched updates of
  predictor states for the rows that emitted a token).
* :func:`rank_score` and :func:`insertion_bonuses`: the length normalisation and the
  insertion bonus of ``search.length_norm`` / ``search.insertion_bonus``
  (:class:`~asr.decoding.config.SearchConfig`), shared by the transducer, TDT and CTC prefix
  beam searches.

Shape legend: B batch (streams), T frames, D encoder dims, C tokens held (the most of any
stream), L candidates per step, E tokens appended in a step (all streams).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from asr.decoding.context_graph import ContextGraph
from asr.state import BATCH_DIM_KEY, is_stream_field, state_field, stream_field
from asr.types import Hypothesis

__all__ = [
    "EMPTY_CHAIN",
    "BeamState",
    "Searcher",
    "StreamBeam",
    "StreamingSearcher",
    "TokenBuffer",
    "TokenChain",
    "TokenRun",
    "check_encoder_output",
    "insertion_bonuses",
    "log_add",
    "rank_score",
    "stream_contexts",
    "where_state",
]


@runtime_checkable
class Searcher(Protocol):
    """Offline search over a whole encoder output."""

    def __call__(self, enc: Tensor, enc_lens: Tensor) -> list[list[Hypothesis]]:
        """enc (B, T, D), enc_lens (B,) -> per utterance an n-best list, best first."""
        ...


@runtime_checkable
class StreamingSearcher(Protocol):
    """Chunk-by-chunk search; ``state`` is a frozen dataclass (see :mod:`asr.state`)."""

    def init_state(self, batch_size: int, device: torch.device) -> Any:
        """State of ``batch_size`` new streams (the beam searches that bias also take
        ``contexts=``, a hotword graph or None per stream: :class:`StreamingBeamSearch`)."""
        ...

    def step(self, enc: Tensor, enc_lens: Tensor, state: Any) -> Any:
        """Consumes encoder frames (B, T, D); frames beyond ``enc_lens`` (B,) are ignored."""
        ...

    def partial(self, state: Any) -> list[Hypothesis]:
        """Current best hypothesis per stream."""
        ...

    def finalize(self, state: Any) -> list[Hypothesis]:
        """Final hypothesis per stream (no more frames will come)."""
        ...


class TokenChain:
    """The tokens of a beam-search hypothesis and the frame of each, as a persistent linked
    list: a node holds the last token and its frame and points at the chain of the tokens
    before it, which every hypothesis extending them shares. :meth:`push` is O(1) (a tuple
    copy was O(n) per expansion: quadratic in a stream without endpointing).

    Equality and hash are those of the token sequence (frames are not compared: hypotheses
    merge by their tokens): the hash is kept per node, built from the parent's, and equal
    hashes are confirmed by walking both chains back to their first shared node, so a merge
    key is exact. :data:`EMPTY_CHAIN` is the chain of no token.

    Attributes:
        parent: the chain of the tokens before the last; None for the empty chain.
        token, frame: the last token and its frame (-1 for the empty chain, and for every
            token of ``aed_beam``, whose tokens are not tied to frames).
        length: the number of tokens.
    """

    __slots__ = ("frame", "length", "parent", "token", "_hash")

    def __init__(self, parent: TokenChain | None, token: int, frame: int) -> None:
        self.parent = parent
        self.token = token
        self.frame = frame
        self.length = 0 if parent is None else parent.length + 1
        self._hash = hash((None if parent is None else parent._hash, token))

    def push(self, token: int, frame: int) -> TokenChain:
        """This chain followed by ``token`` at ``frame`` (``self`` unchanged and shared)."""
        return TokenChain(self, token, frame)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenChain):
            return NotImplemented
        a: TokenChain | None = self
        b: TokenChain | None = other
        while a is not b:
            if a is None or b is None:
                return False
            if a._hash != b._hash or a.length != b.length or a.token != b.token:
                return False
            a, b = a.parent, b.parent
        return True

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"TokenChain(length={self.length}, last={self.token})"

    def tokens(self) -> tuple[int, ...]:
        """(U,) the token ids, oldest first (O(U): for results, not for the search)."""
        return self._pairs()[0]

    def frames(self) -> tuple[int, ...]:
        """(U,) the frame of each token, oldest first."""
        return self._pairs()[1]

    def hypothesis(self, score: float) -> Hypothesis:
        """The chain as a :class:`Hypothesis` of ``score``."""
        tokens, frames = self._pairs()
        return Hypothesis(tokens=tokens, score=score, frames=frames)

    def _pairs(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        tokens, frames = [], []
        node: TokenChain | None = self
        while node is not None and node.parent is not None:
            tokens.append(node.token)
            frames.append(node.frame)
            node = node.parent
        return tuple(reversed(tokens)), tuple(reversed(frames))


EMPTY_CHAIN = TokenChain(None, -1, -1)


@dataclass(frozen=True)
class StreamBeam:
    """The beam of one stream: what a streaming beam search carries from a chunk to the next.

    Attributes:
        hyps: the live hypotheses (the searcher's own frozen Python objects, at most
            ``beam_size``), in the search's order; their token frames are absolute.
        frames_done: encoder frames received so far (the absolute frame of the next one).
        context: the stream's hotword graph, or None.
        pred_proj: transducers: (n, J) projected predictor output of each hypothesis.
        pred_state: transducers: the predictor's own state, one row per hypothesis (a State).
        pending: (P, J) projected encoder frames received but not searched yet, the last P
            before ``frames_done`` (TDT: a decision that depends on where the stream ends
            waits for more frames); None for none.
    """

    hyps: tuple[Any, ...]
    frames_done: int = 0
    context: ContextGraph | None = None
    pred_proj: Tensor | None = None
    pred_state: Any = None
    pending: Tensor | None = None


@dataclass(frozen=True)
class BeamState:
    """Streaming state of the beam searches: one :class:`StreamBeam` per stream, stacked,
    split and selected by :mod:`asr.state` like any State."""

    beams: tuple[StreamBeam, ...] = stream_field()


class StreamingBeamSearch:
    """What the streaming beam searches share (a mixin): ``init_state`` gives each stream its
    hotword graph (``contexts``, else the searcher's ``context``) and the searcher's
    ``_new_beams(graphs, device)``; ``step`` checks a chunk and hands the stream beams to the
    searcher's ``_step(enc, lens, beams)``; ``finalize_nbest`` gives each stream's n-best by
    the searcher's ``_final_nbest(beam)``."""

    context: ContextGraph | None

    @torch.no_grad()
    def init_state(
        self,
        batch_size: int,
        device: torch.device | str,
        contexts: Any = None,
    ) -> BeamState:
        """State of ``batch_size`` new streams.

        Args:
            batch_size: B.
            device: where the search runs.
            contexts: per stream its hotword graph or None; default: the searcher's own graph
                (``context=``) for every stream.
        """
        graphs = stream_contexts(self.context, batch_size, contexts)
        return BeamState(self._new_beams(graphs, device))

    @torch.no_grad()
    def step(self, enc: Tensor, enc_lens: Tensor, state: BeamState) -> BeamState:
        """Consumes a chunk: enc (B, T, D), enc_lens (B,) valid frames of it (more may come)."""
        check_encoder_output(enc, enc_lens)
        if len(state.beams) != enc.shape[0]:
            raise ValueError(f"a state of {len(state.beams)} streams for a chunk of {enc.shape[0]}")
        return BeamState(self._step(enc, enc_lens.tolist(), state.beams))

    def finalize_nbest(self, state: BeamState) -> list[list[Hypothesis]]:
        """Per stream its n-best (at most ``nbest``, best first) if it ended now: what the
        offline search gives for the same frames (the first pass of a streaming rescoring)."""
        return [self._final_nbest(beam) for beam in state.beams]

    def _new_beams(self, graphs: list[ContextGraph | None], device: Any) -> tuple[StreamBeam, ...]:
        raise NotImplementedError

    def _final_nbest(self, beam: StreamBeam) -> list[Hypothesis]:
        raise NotImplementedError

    def _step(
        self, enc: Tensor, lens: list[int], beams: tuple[StreamBeam, ...]
    ) -> tuple[StreamBeam, ...]:
        raise NotImplementedError


def stream_contexts(
    default: ContextGraph | None, batch_size: int, contexts: Any = None
) -> list[ContextGraph | None]:
    """The hotword graph of each of ``batch_size`` new streams: ``contexts`` (one graph or None
    per stream) when given, else the searcher's ``default`` for every stream.

    Raises:
        ValueError: for a number of graphs that is not ``batch_size``.
    """
    graphs = [default] * batch_size if contexts is None else list(contexts)
    if len(graphs) != batch_size:
        raise ValueError(f"{len(graphs)} hotword graphs for {batch_size} streams")
    return graphs


def check_encoder_output(enc: Tensor, enc_lens: Tensor) -> None:
    """Raises ValueError unless enc is (B, T, D) and enc_lens (B,) within [0, T]."""
    if enc.dim() != 3:
        raise ValueError(f"enc must be (B, T, D), got shape {tuple(enc.shape)}")
    if enc_lens.shape != (enc.shape[0],):
        raise ValueError(
            f"enc_lens must be ({enc.shape[0]},) for enc {tuple(enc.shape)}, "
            f"got shape {tuple(enc_lens.shape)}"
        )
    if enc_lens.numel() and (int(enc_lens.min()) < 0 or int(enc_lens.max()) > enc.shape[1]):
        raise ValueError(f"enc_lens {enc_lens.tolist()} must lie in [0, T={enc.shape[1]}]")


def log_add(a: float, b: float) -> float:
    """``log(exp(a) + exp(b))`` for Python floats (-inf allowed)."""
    top = max(a, b)
    if top == -math.inf:
        return top
    return top + math.log(math.exp(a - top) + math.exp(b - top))


def rank_score(score: float, num_tokens: int, length_norm: float) -> float:
    """The score a finished hypothesis is ranked by: ``score / (num_tokens + 1) ** length_norm``.

    ``+ 1`` counts the start symbol, as NeMo's ``score_norm`` does (icefall's ``length_norm``
    divides by the token count plus its predictor context of ``context_size`` start blanks), so
    the empty hypothesis is defined. ``length_norm = 0`` returns ``score`` unchanged (exactly);
    1 ranks by the log-probability per token. -inf stays -inf.
    """
    if not length_norm:
        return score
    return score / (num_tokens + 1) ** length_norm


def insertion_bonuses(vocab_size: int, blank_id: int, bonus: float, device: torch.device) -> Tensor:
    """(V,) float32: ``bonus`` for every token and 0.0 for blank, to add to the (N, V) scores of
    one-label expansions (a blank emits nothing, so it gets no bonus)."""
    row = torch.full((vocab_size,), float(bonus), device=device)
    row[blank_id] = 0.0
    return row


def where_state(mask: Tensor, new: Any, old: Any) -> Any:
    """Row-wise ``new if mask else old`` for two states of the same dataclass type.

    Args:
        mask: (B,) bool over the batch dimension each tensor field declares.
        new, old: states with the same shapes.
    """
    values = {}
    for f in dataclasses.fields(old):
        a, b = getattr(new, f.name), getattr(old, f.name)
        if is_stream_field(f):
            values[f.name] = tuple(x if m else y for x, y, m in zip(a, b, mask.tolist()))
        elif isinstance(b, Tensor):
            dim = int(f.metadata[BATCH_DIM_KEY])
            shape = [1] * b.dim()
            shape[dim] = -1
            values[f.name] = torch.where(mask.view(shape), a, b)
        elif dataclasses.is_dataclass(b):
            values[f.name] = where_state(mask, a, b)
        elif isinstance(b, tuple) and b and dataclasses.is_dataclass(b[0]):
            values[f.name] = tuple(where_state(mask, x, y) for x, y in zip(a, b))
        else:
            values[f.name] = b
    return type(old)(**values)


@dataclass(frozen=True, eq=False, repr=False)
class TokenRun:
    """The emitted tokens of one stream and their absolute frames: the first :attr:`count`
    entries of two lists that later states of the stream may share and have extended.

    :meth:`extend` appends to the lists themselves (amortised O(1) per token, as a Python list
    grows) when nothing is held past this run's entries, which is every step of a stream that
    goes on from its newest state; when another state already appended past them (an older
    state stepped again, e.g. a batch decoded again after a failure), it first copies its own
    entries, so no state ever sees another's tokens. Not compared or printed (a long stream
    holds thousands of tokens; :meth:`TokenBuffer.hypotheses` gives them).

    Attributes:
        tokens: token ids, the first ``count`` this run's.
        frames: the absolute encoder frame of each token, the first ``count`` this run's.
        count: the tokens of this run.
    """

    tokens: list[int]
    frames: list[int]
    count: int

    def extend(self, tokens: Sequence[int], frames: Sequence[int]) -> TokenRun:
        """This run followed by ``tokens`` and their ``frames`` (as many); ``self`` unchanged."""
        if not tokens:
            return self
        held_tokens, held_frames = self.tokens, self.frames
        if len(held_tokens) != self.count:  # a later state holds more: keep to our own
            held_tokens, held_frames = held_tokens[: self.count], held_frames[: self.count]
        held_tokens.extend(tokens)
        held_frames.extend(frames)
        return TokenRun(held_tokens, held_frames, self.count + len(tokens))

    def hypothesis(self, score: float) -> Hypothesis:
        """The run as a :class:`Hypothesis` of log-probability ``score``."""
        return Hypothesis(
            tokens=tuple(self.tokens[: self.count]),
            score=score,
            frames=tuple(self.frames[: self.count]),
        )


@dataclass(frozen=True)
class TokenBuffer:
    """Emitted tokens of B streams (a State, batch dimension 0) that grows with them: nothing
    is ever dropped, and each stream keeps only its own tokens.

    The tokens of a stream are its :class:`TokenRun` (a per-stream field: stacking and
    splitting states pass it on without looking into it), which an append extends without
    copying the tokens before, so a step costs the tokens it adds, not those the stream holds.
    The tokens live on the host, where the results are built from them; the scores stay on
    the searcher's device.

    Attributes:
        runs: per stream, its tokens and their frames.
        score: (B,) float32 accumulated log-probability.
    """

    runs: tuple[TokenRun, ...] = stream_field()
    score: Tensor = state_field(batch_dim=0)

    @staticmethod
    def empty(batch_size: int, device: torch.device | str) -> TokenBuffer:
        """A buffer for ``batch_size`` streams holding no token yet."""
        return TokenBuffer(
            runs=tuple(TokenRun([], [], 0) for _ in range(batch_size)),
            score=torch.zeros(batch_size, dtype=torch.float32, device=device),
        )

    def append(self, tokens: Tensor, frames: Tensor, emit: Tensor) -> TokenBuffer:
        """Appends (at most) one token per stream where ``emit``: tokens, frames, emit (B,)."""
        return self.extend(tokens[:, None], frames[:, None], emit[:, None])

    def extend(self, tokens: Tensor, frames: Tensor, emit: Tensor) -> TokenBuffer:
        """Appends the tokens at the ``emit`` positions of each row, in order (on a GPU two
        device syncs, however many tokens the streams hold: the positions of the appended
        tokens, whose number sizes what follows, and one host transfer of their counts, tokens
        and frames).

        Args:
            tokens, frames: (B, L) candidates; emit: (B, L) bool, which ones to append.
        """
        batch = emit.shape[0]
        added = emit.sum(dim=1)  # (B,)
        rows, columns = emit.nonzero(as_tuple=True)  # (E,) each: the only sync before the copy
        picked = [tokens[rows, columns].long(), frames[rows, columns].long()]
        kept = torch.cat([added, *picked]).tolist()
        counts, values = kept[:batch], kept[batch:]
        total = len(values) // 2
        runs, start = [], 0
        for run, count in zip(self.runs, counts):
            end = start + count
            runs.append(run.extend(values[start:end], values[total + start: total + end]))
            start = end
        return TokenBuffer(tuple(runs), self.score)

    def add_score(self, delta: Tensor) -> TokenBuffer:
        """Adds ``delta`` (B,) to the scores."""
        return dataclasses.replace(self, score=self.score + delta.to(self.score.dtype))

    def hypotheses(self) -> list[Hypothesis]:
        """One :class:`Hypothesis` per stream (one host transfer)."""
        return [run.hypothesis(float(s)) for run, s in zip(self.runs, self.score.tolist())]
