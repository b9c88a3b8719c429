"""Batched label-looping greedy search for RNN-T and TDT, offline and streaming.

RNN-T: Graves 2012, "Sequence Transduction with Recurrent Neural Networks" (arXiv:1211.3711).
TDT: Xu et al. 2023, "Efficient Sequence Transduction by Jointly Predicting Tokens and
Durations" (arXiv:2304.06795): a decision moves the frame pointer by the predicted duration, so
blank runs are skipped several frames at a time. Label looping: Bataev et al. 2024,
"Label-Looping: Highly Efficient Decoding for Transducers" (arXiv:2406.06220).

Every utterance of the batch has its own frame pointer. The outer loop emits one token per
utterance and runs the predictor once for the whole batch; the inner loop moves the utterances
that chose blank to their next frame (by 1 for RNN-T, by the predicted duration for TDT) and
re-evaluates only the joiner, until every unfinished utterance has found a token. There is no
loop over utterances.

``max_symbols_per_frame``: RNN-T moves the pointer by one frame after that many tokens on one
frame (the usual guard). TDT instead excludes duration 0 for the token that would be the
``max_symbols_per_frame``-th on its frame, so that every decision is a scored arc of the TDT
lattice (:mod:`asr.decoding.transducer_common`).

End of a TDT utterance: the TDT loss (:mod:`asr.losses.tdt`) scores only paths that end with a
blank landing exactly on the last frame ``T``, so the search takes only such moves: a token
lands before ``T``, a blank on or before it (the masks of
:meth:`~asr.decoding.transducer_common.TransducerScorer.tdt_move_masks`), and the search ends
when a blank lands on ``T``. The hypothesis score is then the log-probability of a path the
loss sums. (NeMo's greedy TDT search stops at the first move that reaches or passes ``T``,
token or blank, which its TDT loss does not score.) With no frames the hypothesis is empty with
score 0. If no path can end on ``T`` (possible only when 1 is not a duration) the utterance
ends there with score ``-inf``.

Streaming: the same :meth:`LabelLoopingGreedy.step` consumes a chunk of frames, with frames
absolute (``frames_done``). A TDT decision near the end of what has arrived may depend on where
the stream ends: a move landing past the last frame received, or a token landing on it, is
allowed only if more frames come. So in a chunk a stream takes a decision only if it is allowed
whatever the end (then it is also the decision of the offline search); otherwise it waits on
that frame, keeping the (at most ``max(durations)``) projected frames from there in the state
(``pending``), and decides when the next chunk arrives or, with the end known, in
:meth:`LabelLoopingGreedy.finalize`. So streaming results equal offline results (when 1 is a
duration), and a partial hypothesis lags only while a stream waits. RNN-T decisions never
depend on the end: nothing waits. The offline search is one final step over all frames.

Shape legend: B batch (streams), T frames, D encoder dims, J joiner dims, C token capacity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from asr.decoding.base import TokenBuffer, check_encoder_output, where_state
from asr.decoding.config import SearchConfig
from asr.decoding.transducer_common import TransducerScorer
from asr.heads.transducer import TransducerHead
from asr.state import state_field
from asr.types import Hypothesis

__all__ = ["LabelLoopingGreedy", "TransducerGreedyState"]


@dataclass(frozen=True)
class TransducerGreedyState:
    """Streaming state of :class:`LabelLoopingGreedy`.

    Attributes:
        pred_proj: (B, J) projected predictor output for the last emitted token.
        pred_state: the predictor's own state after that token (a nested State).
        pending: (B, H, J) projected encoder frames received but not decided yet (TDT: the
            stream waits on the first of them), right-aligned: the last ``num_pending`` of the
            H = ``max(durations)`` slots are valid (H = 0 for RNN-T).
        num_pending: (B,) int64 valid frames in ``pending``.
        count: (B,) int64 tokens of duration 0 emitted on the frame the stream waits on.
        frames_done: (B,) int64 encoder frames received so far (``pending`` included).
        hyp: emitted tokens, frames and score.
    """

    pred_proj: Tensor = state_field(batch_dim=0)
    pred_state: Any
    pending: Tensor = state_field(batch_dim=0)
    num_pending: Tensor = state_field(batch_dim=0)
    count: Tensor = state_field(batch_dim=0)
    frames_done: Tensor = state_field(batch_dim=0)
    hyp: TokenBuffer


@dataclass
class _Loop:
    """Mutable per-chunk loop variables (never stored: the state stays frozen)."""

    rows: Tensor  # (B,) arange, for gathering each row's frame
    t: Tensor  # (B,) frame pointer within the pending + chunk frames
    end: Tensor  # (B,) end of each row's valid frames there
    count: Tensor  # (B,) tokens emitted on the current frame
    waiting: Tensor  # (B,) bool: TDT rows whose next decision depends on the end of the stream
    final: bool  # whether ``end`` is the end of the utterance
    pred_proj: Tensor
    pred_state: Any
    # per decision: log-probabilities (B,) and the rows that took it (B,) bool; summed once
    # at the end of the chunk (no per-decision op)
    decisions: list[tuple[Tensor, Tensor]]


class LabelLoopingGreedy:
    """Greedy transducer search (RNN-T, or TDT with frame skipping).

    Args:
        head: a transducer head (``loss`` full/pruned for RNN-T, ``tdt`` for TDT).
        cfg: uses ``max_symbols_per_frame``, ``blank_penalty`` and ``max_stream_tokens``.
    """

    def __init__(self, head: TransducerHead, cfg: SearchConfig) -> None:
        self.scorer = TransducerScorer(head, cfg.blank_penalty)
        self.cfg = cfg

    @torch.no_grad()
    def init_state(
        self, batch_size: int, device: torch.device | str, capacity: int | None = None
    ) -> TransducerGreedyState:
        """State of ``batch_size`` new streams (``capacity`` tokens each, default from cfg)."""
        pred_proj, pred_state = self.scorer.initial(batch_size, device)
        zeros = torch.zeros(batch_size, dtype=torch.int64, device=device)
        horizon = max(self.scorer.durations, default=0)
        return TransducerGreedyState(
            pred_proj=pred_proj,
            pred_state=pred_state,
            pending=pred_proj.new_zeros(batch_size, horizon, pred_proj.shape[-1]),
            num_pending=zeros,
            count=zeros.clone(),
            frames_done=zeros.clone(),
            hyp=TokenBuffer.empty(batch_size, capacity or self.cfg.max_stream_tokens, device),
        )

    @torch.no_grad()
    def step(
        self, enc: Tensor, enc_lens: Tensor, state: TransducerGreedyState
    ) -> TransducerGreedyState:
        """Consumes a chunk: enc (B, T, D), enc_lens (B,) valid frames of it (more may come)."""
        check_encoder_output(enc, enc_lens)
        return self._run(self.scorer.project_encoder(enc), enc_lens, state, final=False)

    def _run(
        self, enc_proj: Tensor, enc_lens: Tensor, state: TransducerGreedyState, final: bool
    ) -> TransducerGreedyState:
        """Decides on the pending frames followed by the chunk ``enc_proj (B, T, J)``; with
        ``final`` the utterances end after it."""
        horizon = state.pending.shape[1]
        enc_lens = enc_lens.to(enc_proj.device, torch.int64)
        # pending frames first; one zero frame last, read (not used) by rows that have ended
        pieces = [
            state.pending.to(enc_proj.dtype),
            enc_proj,
            enc_proj.new_zeros(enc_proj.shape[0], 1, enc_proj.shape[2]),
        ]
        enc_proj = torch.cat(pieces if horizon else pieces[1:], dim=1)
        loop = _Loop(
            rows=torch.arange(enc_proj.shape[0], device=enc_proj.device),
            t=horizon - state.num_pending,
            end=horizon + enc_lens,
            count=state.count,
            waiting=torch.zeros_like(enc_lens, dtype=torch.bool),
            final=final,
            pred_proj=state.pred_proj,
            pred_state=state.pred_state,
            decisions=[],
        )
        emitted: list[tuple[Tensor, Tensor, Tensor]] = []
        active = loop.t < loop.end
        while bool(active.any()):
            label, advance, log_prob = self._next_token(enc_proj, loop, active)
            emit = self._live(loop)  # rows that found a token before the end
            loop.decisions.append((log_prob, emit))
            emitted.append((label, loop.t, emit))
            self._advance_after_token(loop, advance, emit)
            every_row = bool(emit.all())
            if every_row or bool(emit.any()):
                self._feed_predictor(loop, label, emit, every_row)
            active = self._live(loop)
        hyp = state.hyp
        first_frame = state.frames_done - horizon  # absolute frame of position 0
        if emitted:
            labels, frames, emits = (torch.stack(items, dim=1) for items in zip(*emitted))
            hyp = hyp.extend(labels, first_frame[:, None] + frames, emits)
        if loop.decisions:
            log_probs, taken = (torch.stack(items) for items in zip(*loop.decisions))
            hyp = hyp.add_score(torch.where(taken, log_probs, 0.0).sum(dim=0))
        num_pending = (loop.end - loop.t).clamp(min=0)
        pending = state.pending
        if horizon and not final:  # the last H frames of each row
            index = loop.end[:, None] - horizon + torch.arange(horizon, device=enc_proj.device)
            pending = enc_proj[loop.rows[:, None], index]
        return TransducerGreedyState(
            pred_proj=loop.pred_proj,
            pred_state=loop.pred_state,
            pending=pending,
            num_pending=num_pending,
            count=loop.count,
            frames_done=state.frames_done + enc_lens,
            hyp=hyp,
        )

    @staticmethod
    def _live(loop: _Loop) -> Tensor:
        """(B,) rows still deciding: before their end and not waiting for the stream's end."""
        before_end = loop.t < loop.end
        return before_end if loop.final else before_end & ~loop.waiting

    def _decide_at(self, enc_proj: Tensor, loop: _Loop) -> tuple[Tensor, Tensor, Tensor]:
        """Decision of every row at its frame; TDT rows whose decision depends on the end of the
        stream (not ``final``) start waiting instead."""
        enc_frame = enc_proj[loop.rows, loop.t]  # t <= end: at most the zero frame after all
        if not self.scorer.is_tdt:
            return self.scorer.decide(enc_frame, loop.pred_proj)
        no_stay = loop.count >= self.cfg.max_symbols_per_frame - 1
        left = loop.end - loop.t
        if loop.final:
            return self.scorer.decide(enc_frame, loop.pred_proj, left, no_stay)
        label, advance, log_prob = self.scorer.decide(enc_frame, loop.pred_proj, None, no_stay)
        # allowed whatever the end: a token landing before it, a blank up to it
        certain = advance + (label != self.scorer.blank_id) <= left
        loop.waiting = loop.waiting | ((left > 0) & ~certain)
        return label, advance, log_prob

    def _next_token(
        self, enc_proj: Tensor, loop: _Loop, active: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Inner loop: moves blank-choosing rows forward (joiner only) until each active row
        has a token, has reached its end or waits; returns the decision in force for every row."""
        label, advance, log_prob = self._decide_at(enc_proj, loop)
        blank = active & (label == self.scorer.blank_id)
        if not loop.final:
            blank = blank & ~loop.waiting
        while bool(blank.any()):
            loop.decisions.append((log_prob, blank))
            loop.t = loop.t + advance * blank
            loop.count = loop.count.masked_fill(blank, 0)
            moved = blank & (loop.t < loop.end)
            if not bool(moved.any()):
                break
            new_label, new_advance, new_log_prob = self._decide_at(enc_proj, loop)
            label = torch.where(moved, new_label, label)
            advance = torch.where(moved, new_advance, advance)
            log_prob = torch.where(moved, new_log_prob, log_prob)
            blank = moved & (label == self.scorer.blank_id)
            if not loop.final:
                blank = blank & ~loop.waiting
        return label, advance, log_prob

    def _advance_after_token(self, loop: _Loop, advance: Tensor, emit: Tensor) -> None:
        """Moves emitting rows by the token's duration; counts tokens on a frame. RNN-T moves
        by one frame after ``max_symbols_per_frame`` of them; TDT never needs to (the masks
        exclude duration 0 for the last one). Other rows keep their pointer and count."""
        count = (loop.count + 1) * (advance == 0)  # tokens on this frame; 0 once the row moves
        if not self.scorer.is_tdt:
            forced = count >= self.cfg.max_symbols_per_frame
            count = count.masked_fill(forced, 0)
            advance = advance + forced
        loop.count = torch.where(emit, count, loop.count)
        loop.t = loop.t + advance * emit

    def _feed_predictor(self, loop: _Loop, label: Tensor, emit: Tensor, every_row: bool) -> None:
        """One batched predictor step; rows that did not emit keep their output and state."""
        if every_row:
            loop.pred_proj, loop.pred_state = self.scorer.predict(label, loop.pred_state)
            return
        tokens = torch.where(emit, label, torch.full_like(label, self.scorer.blank_id))
        pred_proj, pred_state = self.scorer.predict(tokens, loop.pred_state)
        loop.pred_proj = torch.where(emit[:, None], pred_proj, loop.pred_proj)
        loop.pred_state = where_state(emit, pred_state, loop.pred_state)

    def partial(self, state: TransducerGreedyState) -> list[Hypothesis]:
        """Best hypothesis so far, per stream."""
        return state.hyp.hypotheses()

    @torch.no_grad()
    def finalize(self, state: TransducerGreedyState) -> list[Hypothesis]:
        """Final hypothesis per stream: decides on the pending frames, the end now known."""
        if bool((state.num_pending > 0).any()):
            empty = state.pending[:, :0]
            lens = torch.zeros_like(state.num_pending)
            state = self._run(empty, lens, state, final=True)
        return state.hyp.hypotheses()

    @torch.no_grad()
    def __call__(self, enc: Tensor, enc_lens: Tensor) -> list[list[Hypothesis]]:
        """Offline search: one final step over all frames. enc (B, T, D), enc_lens (B,)."""
        check_encoder_output(enc, enc_lens)
        capacity = max(enc.shape[1] * self.cfg.max_symbols_per_frame, 1)
        state = self.init_state(enc.shape[0], enc.device, capacity=capacity)
        state = self._run(self.scorer.project_encoder(enc), enc_lens, state, final=True)
        return [[hyp] for hyp in state.hyp.hypotheses()]
