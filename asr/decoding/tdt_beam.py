"""TDT beam search with frame skipping (Xu et al. 2023, "Efficient Sequence Transduction by
Jointly Predicting Tokens and Durations", arXiv:2304.06795).

A TDT hypothesis sits on its own frame: each decision (a token with duration ``d >= 0``, or
blank with ``d >= 1``) moves it by ``d`` frames. The search keeps up to ``beam_size`` live
hypotheses; each iteration expands the live hypotheses on the smallest frame (the others wait),
scoring every (label, duration) pair with ``log P(label) + log P(duration)``. The waiting
hypotheses keep their places (their scores already paid for the frames they skipped, so they
are not compared with hypotheses behind them), and the best continuations fill the other
places of the ``beam_size``: each kept continuation takes one place whether it stays live or
finishes, and the others are dropped, finishing or not (so with ``beam_size = 1`` only the best
move is ever taken). Among the kept moves, those with the same tokens on the same frame are
merged by log-add, as in the modified beam search of icefall (Kuang et al. 2022,
arXiv:2206.13236) and NeMo's TDT beam search (by tokens and last frame). The key needs no count
of the tokens a hypothesis emitted on its frame (the ``max_symbols_per_frame`` rule below): the
hypotheses on the smallest frame are expanded together, so they share that count, and every
other hypothesis arrived on its frame with a positive duration (count 0).

Which moves exist is the TDT loss' rule (:mod:`asr.losses.tdt`): a path ends with a blank
landing exactly on the last frame ``T``. So a token may not land on or past ``T``, a blank not
past it, and neither on a frame from which ``T`` cannot be reached
(:meth:`~asr.decoding.transducer_common.TransducerScorer.tdt_move_masks`, shared with greedy
search); a hypothesis is finished when its blank lands on ``T``. Every finished hypothesis is
thus a sum of complete alignments that the loss also sums, and finished hypotheses with the
same tokens are log-added (each is a set of complete alignments of those tokens; with a beam
that never drops a move, the score of a token sequence is the sum of its alignments that keep
the ``max_symbols_per_frame`` rule: ``-tdt_loss`` of it when none breaks the rule). That rule, as
in greedy search: the token that would be the ``max_symbols_per_frame``-th on its frame may not
take duration 0. Scores only decrease, so a live hypothesis at or below the ``beam_size``-th
finished score (once ``beam_size`` hypotheses have finished) is dropped (it could only add to a
finished hypothesis with the same tokens), and the search stops when none is live. With no
frames the result is the empty hypothesis with score 0 (the loss drops such utterances); if no
path can end on ``T`` (possible only when 1 is not a duration), the empty hypothesis with score
``-inf``.

NeMo's greedy TDT search ends at the first move that reaches or passes ``T`` (a token, or a
jump past ``T``), which its own TDT loss, like ours, does not score; such an ending skips the
final blank's probability and favours finishing early, so the loss' rule is kept here.

With ``beam_size = 1`` this is exactly :class:`asr.decoding.transducer_greedy.LabelLoopingGreedy`
on a TDT head: the same allowed moves, the same joint (label, duration) decision, same score.

Shallow fusion with a token LM, as in :mod:`asr.decoding.transducer_beam`: a token adds
``lm_weight * log P_lm(token | history)``, and a hypothesis that reaches the last frame adds
``lm_weight * log P_lm(</s> | history)`` before it enters the finished set (so the pruning
bound stays valid: a live score only decreases).

Insertion bonus and length normalisation (:class:`~asr.decoding.config.SearchConfig`): a token
adds ``insertion_bonus`` to the score of its moves (so it acts on which moves are kept and on
the merging of finished hypotheses, which share it), and the finished hypotheses are ranked by
``score / (L + 1) ** length_norm``. With ``insertion_bonus > 0`` or ``length_norm > 0`` the
ranking score of a live hypothesis can grow as it goes on, so the bound above is not applied:
live hypotheses are dropped only by the beam. Both 0 (the default): the search above.

Contextual biasing (:mod:`asr.decoding.context_graph`): with a hotword graph each hypothesis
carries its graph state, a token adds the graph's bonus to its moves before they are ranked, and
a hypothesis that reaches the last frame adds the graph's ``finalize`` (an unfinished partial
match gives its boost back) with the LM's end of sentence. Bonuses can raise a live score, so
with a graph the finished bound is not applied either.

Streaming (:meth:`TdtBeamSearch.step`, a :class:`~asr.decoding.base.BeamState` of one
:class:`~asr.decoding.base.StreamBeam` per stream): which moves a hypothesis on frame ``t`` may
take depends on ``T - t`` only while it is below the scorer's ``lookahead`` (e.g. 5 for durations
0..4: a jump must not pass the end). So in a chunk a stream expands its smallest frame only once
``lookahead`` frames from it have arrived; then every move lands on a frame received, none can
end the stream, and the moves are those of the offline search. The projected frames from the
smallest live frame on (fewer than ``lookahead``) stay in the stream's state, and the rest of the
search runs in :meth:`TdtBeamSearch.finalize`, where ``T`` is known. The offline search is this
step over all frames followed by the end, so streaming results equal offline ones: the same moves on
the same scores, up to the rounding of the encoder frames' joiner projection, which a BLAS may sum
in another order for a chunk's few rows than for all frames (last-bit score differences on some
CPUs). Where the positive durations share a factor (e.g. 0, 2, 4) the moves depend on ``T`` for ever
and a stream searches only at its end.

Utterances are searched one after another; the joiner and predictor run batched over the
hypotheses of an utterance.

Shape legend: T frames, D encoder dims, J joiner dims, V vocabulary incl. blank, K durations,
L live hypotheses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from asr.decoding.base import (
    EMPTY_CHAIN,
    BeamState,
    StreamBeam,
    StreamingBeamSearch,
    TokenChain,
    insertion_bonuses,
    log_add,
    rank_score,
    where_state,
)
from asr.decoding.config import SearchConfig
from asr.decoding.context_graph import ContextGraph
from asr.decoding.lm import LanguageModel, fusion_lm
from asr.decoding.transducer_common import TransducerScorer
from asr.heads.transducer import TransducerHead
from asr.state import select_states
from asr.types import Hypothesis

__all__ = ["TdtBeamSearch"]


@dataclass(frozen=True)
class _Hyp:
    tokens: TokenChain  # with the frame of each token
    score: float
    frame: int  # next frame to read
    count: int  # tokens emitted on ``frame`` (duration 0)
    lm_state: Hashable = None
    before_end: float = 0.0  # finished hypotheses: the score before the LM's end of sentence
    context: int = 0  # hotword graph state


def _merge(kept: _Hyp, other: _Hyp) -> _Hyp:
    """``kept`` (the first one found, whose frames stay) with ``other``'s probability added:
    the same tokens on the same frame, reached by other alignments (``before_end`` is only
    used by finished hypotheses, where :meth:`TdtBeamSearch._finish` set it)."""
    return _Hyp(
        kept.tokens,
        log_add(kept.score, other.score),
        kept.frame,
        kept.count,
        kept.lm_state,
        log_add(kept.before_end, other.before_end),
        kept.context,
    )


@dataclass(frozen=True)
class _Move:
    """A candidate: hypothesis ``row`` of the pool, optionally extended by
    ``label``/``duration``."""

    score: float
    row: int
    label: int | None = None  # None: a waiting hypothesis, unchanged
    duration: int = 0


class TdtBeamSearch(StreamingBeamSearch):
    """Beam search over a TDT head.

    Args:
        head: a transducer head with ``loss="tdt"``.
        cfg: uses ``beam_size``, ``nbest``, ``max_symbols_per_frame``, ``blank_penalty``,
            ``lm_weight``, ``insertion_bonus`` and ``length_norm``.
        lm: optional token LM fused with weight ``cfg.lm_weight`` (module docstring).
        context: optional hotword graph (module docstring).
    """

    def __init__(
        self,
        head: TransducerHead,
        cfg: SearchConfig,
        lm: LanguageModel | None = None,
        context: ContextGraph | None = None,
    ) -> None:
        self.scorer = TransducerScorer(head, cfg.blank_penalty)
        if not self.scorer.is_tdt:
            raise ValueError("TdtBeamSearch needs a transducer head with loss='tdt'")
        self.cfg = cfg
        self.lm = fusion_lm(lm, cfg.lm_weight, head.vocab_size, "transducer head")
        # the finished bound of _prune holds while a live hypothesis' ranking score cannot grow
        # (and the stream has no hotword graph)
        self.context = context
        self._bounded = cfg.insertion_bonus <= 0 and cfg.length_norm == 0
        self._lookahead = self.scorer.lookahead
        self._bonus: Tensor | None = None

    @torch.no_grad()
    def __call__(self, enc: Tensor, enc_lens: Tensor) -> list[list[Hypothesis]]:
        """enc (B, T, D), enc_lens (B,) -> per utterance the n-best, best first: the
        streaming search in one step over all frames, then its end."""
        state = self.step(enc, enc_lens, self.init_state(enc.shape[0], enc.device))
        return [self._end(beam) for beam in state.beams]

    def _new_beams(
        self, graphs: list[ContextGraph | None], device: torch.device | str
    ) -> tuple[StreamBeam, ...]:
        """A beam per stream: the start hypothesis, the predictor's start, no frame held."""
        pred_proj, pred_state = self.scorer.initial(1, device)
        start = _Hyp(EMPTY_CHAIN, 0.0, 0, 0, self.lm.init_state() if self.lm is not None else None)
        none = pred_proj.new_zeros(0, pred_proj.shape[-1])
        return tuple(
            StreamBeam((start,), 0, graph, pred_proj, pred_state, none) for graph in graphs
        )

    def _step(
        self, enc: Tensor, lens: list[int], beams: tuple[StreamBeam, ...]
    ) -> tuple[StreamBeam, ...]:
        """Each stream searches its frames as far as its moves do not depend on where it ends
        (module docstring); the frames it has not searched stay in its state."""
        enc_proj = self.scorer.project_encoder(enc)
        return tuple(
            self._advance(beam, enc_proj[b, :n]) for b, (beam, n) in enumerate(zip(beams, lens))
        )

    def partial(self, state: BeamState) -> list[Hypothesis]:
        """Per stream its best live hypothesis, ranked as at the end (without the frames it
        has not searched yet)."""
        return [self._best_live(beam) for beam in state.beams]

    @torch.no_grad()
    def finalize(self, state: BeamState) -> list[Hypothesis]:
        """Per stream the best hypothesis, its end now known."""
        return [self._end(beam)[0] for beam in state.beams]

    def _final_nbest(self, beam: StreamBeam) -> list[Hypothesis]:
        return self._end(beam)

    def _advance(self, beam: StreamBeam, chunk: Tensor) -> StreamBeam:
        """``beam`` after the new projected frames ``chunk (n, J)``."""
        if not chunk.shape[0]:
            return beam
        frames = torch.cat([beam.pending, chunk]) if beam.pending.shape[0] else chunk
        received = beam.frames_done + chunk.shape[0]
        first = received - frames.shape[0]  # absolute frame of frames[0]
        live, pred_proj, pred_state = self._search(
            list(beam.hyps), frames, first, received, None, beam.pred_proj, beam.pred_state,
            beam.context, {},
        )
        keep = min((hyp.frame for hyp in live), default=received)
        return StreamBeam(
            tuple(live), received, beam.context, pred_proj, pred_state, frames[keep - first :]
        )

    def _end(self, beam: StreamBeam) -> list[Hypothesis]:
        """The n-best of a stream that ends after its ``frames_done`` frames."""
        num_frames = beam.frames_done
        live = list(beam.hyps) if num_frames else []
        finished: dict[TokenChain, _Hyp] = {}
        if not num_frames:
            finished[EMPTY_CHAIN] = self._finish(beam.hyps[0], beam.context)
        first = num_frames - beam.pending.shape[0]
        self._search(
            live, beam.pending, first, num_frames, num_frames, beam.pred_proj, beam.pred_state,
            beam.context, finished,
        )
        if not finished:  # T cannot be reached from frame 0 with these durations
            return [Hypothesis(tokens=(), score=float("-inf"), frames=())]
        # best first; hypotheses that cannot end (-inf) after the others, by their score so far
        alpha = self.cfg.length_norm
        scored = []
        for h in finished.values():
            length = len(h.tokens)
            before_end = rank_score(h.before_end, length, alpha)
            scored.append((rank_score(h.score, length, alpha), before_end, h))
        scored.sort(key=lambda item: item[:2], reverse=True)
        return [h.tokens.hypothesis(score) for score, _, h in scored[: self.cfg.nbest]]

    def _best_live(self, beam: StreamBeam) -> Hypothesis:
        """The live hypothesis that would rank first if it ended here (for partial results)."""
        alpha = self.cfg.length_norm
        ranked = [
            (rank_score(self._finish(h, beam.context).score, len(h.tokens), alpha), h)
            for h in beam.hyps
        ]
        if not ranked:
            return Hypothesis(tokens=())
        score, best = max(ranked, key=lambda item: item[0])
        return best.tokens.hypothesis(score)

    def _search(
        self,
        live: list[_Hyp],
        frames: Tensor,
        first: int,
        received: int,
        num_frames: int | None,
        pred_proj: Tensor,
        pred_state: Any,
        context: ContextGraph | None,
        finished: dict[TokenChain, _Hyp],
    ) -> tuple[list[_Hyp], Tensor, Any]:
        """Expands the live hypotheses on their smallest frame, again and again.

        Args:
            live: the beam; frames: (P, J) projected frames ``first .. received - 1``.
            num_frames: the end of the stream (``received``), or None while it is unknown:
                then a frame is searched only with :attr:`TransducerScorer.lookahead` frames
                from it on received, and nothing finishes.
            pred_proj, pred_state: the predictor rows of ``live``.
            context: the stream's hotword graph.
            finished: the finished hypotheses by tokens (updated).

        Returns:
            the live hypotheses left and their predictor rows.
        """
        while live:
            frame = min(hyp.frame for hyp in live)
            if num_frames is None and (self._lookahead is None
                                       or received - frame < self._lookahead):
                break  # its moves depend on where the stream ends
            expand = [i for i, hyp in enumerate(live) if hyp.frame == frame]
            waiting = [_Move(hyp.score, i) for i, hyp in enumerate(live) if hyp.frame != frame]
            moves = self._expansions(
                frames[frame - first], live, expand, pred_proj, received - frame, context
            )
            kept = waiting + moves[: self.cfg.beam_size - len(waiting)]  # moves: best first
            kept.sort(key=lambda move: move.score, reverse=True)
            new_live, rows, labels = self._select(kept, live, finished, num_frames, context)
            pred_proj, pred_state = self._update_predictor(pred_proj, pred_state, rows, labels)
            live = new_live
            live, pred_proj, pred_state = self._prune(
                live, pred_proj, pred_state, finished, context
            )
        return live, pred_proj, pred_state

    def _expansions(
        self,
        enc_frame: Tensor,
        live: list[_Hyp],
        expand: list[int],
        pred_proj: Tensor,
        remaining: int,
        context: ContextGraph | None,
    ) -> list[_Move]:
        """The ``beam_size`` best allowed (label, duration) continuations of the ``expand``
        rows, ``remaining`` frames before the last one."""
        device = pred_proj.device
        rows = torch.tensor(expand, device=device)
        token_lp, dur_lp = self.scorer.log_probs(enc_frame.expand(len(expand), -1), pred_proj[rows])
        assert dur_lp is not None
        scores = torch.tensor([live[i].score for i in expand], device=device)
        if self.lm is not None:
            lm_lp = torch.stack([self.lm.score(live[i].lm_state) for i in expand])
            lm_lp[:, self.scorer.blank_id] = 0.0  # blank is not a token of the LM
            token_lp = token_lp + self.cfg.lm_weight * lm_lp.to(token_lp.device)
        if self.cfg.insertion_bonus:
            if self._bonus is None or self._bonus.device != device:
                self._bonus = insertion_bonuses(
                    self.scorer.vocab_size, self.scorer.blank_id, self.cfg.insertion_bonus, device
                )
            token_lp = token_lp + self._bonus
        if context is not None:
            states = torch.tensor([live[i].context for i in expand], device=device)
            token_lp = token_lp + context.deltas(states)
        no_stay = torch.tensor(
            [live[i].count + 1 >= self.cfg.max_symbols_per_frame for i in expand], device=device
        )
        left = torch.full((len(expand),), remaining, dtype=torch.int64, device=device)
        masks = self.scorer.tdt_move_masks(left, no_stay, device)  # (E, 2, K): blank, tokens
        blank = self.scorer.blank_id
        moves = dur_lp[:, None, :] + masks[:, 1:]  # (E, 1, K) for every token
        total = scores[:, None, None] + token_lp[:, :, None] + moves  # (E, V, K)
        total[:, blank] = scores[:, None] + token_lp[:, blank, None] + dur_lp + masks[:, 0]
        num_durations = dur_lp.shape[1]
        flat = total.view(-1)
        values, index = flat.topk(min(self.cfg.beam_size, flat.numel()))
        moves_out = []
        for value, position in zip(values.tolist(), index.tolist()):
            if value == float("-inf"):
                continue
            row, rest = divmod(position, total.shape[1] * num_durations)
            label, duration_index = divmod(rest, num_durations)
            duration = self.scorer.durations[duration_index]
            moves_out.append(_Move(value, expand[row], label, duration))
        return moves_out

    def _select(
        self,
        moves: list[_Move],
        live: list[_Hyp],
        finished: dict[TokenChain, _Hyp],
        num_frames: int | None,
        context: ContextGraph | None,
    ) -> tuple[list[_Hyp], list[int], list[int]]:
        """The kept moves, best first: finished ones log-added into ``finished`` (by tokens),
        live ones into the new beam (merged by tokens and frame)."""
        new_live: list[_Hyp] = []
        where: dict[tuple[TokenChain, int], int] = {}
        rows: list[int] = []
        labels: list[int] = []
        blank = self.scorer.blank_id
        for move in moves:
            hyp = self._apply(live[move.row], move, context)
            if hyp.frame == num_frames:  # a blank landed on the last frame: a complete path
                hyp = self._finish(hyp, context)
                old = finished.get(hyp.tokens)
                finished[hyp.tokens] = hyp if old is None else _merge(old, hyp)
                continue
            key = (hyp.tokens, hyp.frame)
            if key in where:
                new_live[where[key]] = _merge(new_live[where[key]], hyp)
            else:
                where[key] = len(new_live)
                new_live.append(hyp)
                rows.append(move.row)
                labels.append(blank if move.label is None else move.label)
        return new_live, rows, labels

    def _apply(self, hyp: _Hyp, move: _Move, context: ContextGraph | None) -> _Hyp:
        """The hypothesis after ``move`` (the masks made it an allowed move)."""
        if move.label is None:
            return hyp
        count = 0
        tokens, lm_state = hyp.tokens, hyp.lm_state
        state = hyp.context
        if move.label != self.scorer.blank_id:
            tokens = tokens.push(move.label, hyp.frame)
            if self.lm is not None:
                lm_state = self.lm.advance(lm_state, move.label)
            if context is not None:
                state = context.step(state, move.label)[1]
            if move.duration == 0:
                count = hyp.count + 1
        return _Hyp(
            tokens, move.score, hyp.frame + move.duration, count, lm_state, context=state
        )

    def _finish(self, hyp: _Hyp, context: ContextGraph | None) -> _Hyp:
        """``hyp`` with the LM's end-of-sentence score and the hotword graph's ``finalize`` added
        (unchanged without either) and the score before them in ``before_end``."""
        final = hyp.score
        if self.lm is not None:
            final += self.cfg.lm_weight * self.lm.final_score(hyp.lm_state)
        if context is not None:
            final += context.finalize(hyp.context)
        return dataclasses.replace(hyp, score=final, before_end=hyp.score)

    def _update_predictor(
        self, pred_proj: Tensor, pred_state: Any, rows: list[int], labels: list[int]
    ) -> tuple[Tensor, Any]:
        """Predictor outputs of the new beam: parents' rows, advanced where a token was added."""
        if not rows:  # nothing live: the search ends
            return pred_proj, pred_state
        index = torch.tensor(rows, device=pred_proj.device)
        label_tensor = torch.tensor(labels, device=pred_proj.device)
        pred_proj, pred_state = pred_proj[index], select_states(pred_state, index)
        emit = label_tensor != self.scorer.blank_id
        if bool(emit.any()):
            new_proj, new_state = self.scorer.predict(label_tensor, pred_state)
            pred_proj = torch.where(emit[:, None], new_proj, pred_proj)
            pred_state = where_state(emit, new_state, pred_state)
        return pred_proj, pred_state

    def _prune(
        self,
        live: list[_Hyp],
        pred_proj: Tensor,
        pred_state: Any,
        finished: dict[TokenChain, _Hyp],
        context: ContextGraph | None,
    ) -> tuple[list[_Hyp], Tensor, Any]:
        """Drops live hypotheses that cannot beat the ``beam_size``-th finished one (only
        where scores cannot grow: see the module docstring)."""
        bounded = self._bounded and context is None
        if not bounded or len(finished) < self.cfg.beam_size or not live:
            return live, pred_proj, pred_state
        scores = sorted((hyp.score for hyp in finished.values()), reverse=True)
        bound = scores[self.cfg.beam_size - 1]
        keep = [i for i, hyp in enumerate(live) if hyp.score > bound]
        if len(keep) == len(live):
            return live, pred_proj, pred_state
        if not keep:
            return [], pred_proj[:0], pred_state
        return [live[i] for i in keep], pred_proj[keep], select_states(pred_state, keep)
