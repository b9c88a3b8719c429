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

Shape legend: B batch (streams), T frames, D encoder dims, J joiner dims.
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
    """Mutable per-chunk loop variables (never stored: the state stays frozen).

    Frames are addressed by their flat position in the chunk's (B * W, J) projected frames
    (row ``b``'s frame ``t`` at ``b * W + t``), so that one ``index_select`` reads every row's
    frame, and another its TDT move masks.
    """

    frames: Tensor  # (B * W, J) projected pending + chunk frames (and a zero frame per row)
    masks: Tensor | None  # (2 * B * W, 2, K) TDT move masks per position (without / with no_stay)
    output_bias: Tensor | None  # joiner output bias with the blank penalty
    pos: Tensor  # (B,) flat position of each row's frame
    mask_pos: Tensor | None  # (B,) TDT: its row of ``masks``: pos, + B * W when no_stay
    end: Tensor  # (B,) flat position of the end of each row's valid frames
    count: Tensor  # (B,) tokens emitted on the current frame
    zeros: Tensor  # (B,) int64 zeros
    waiting: Tensor  # (B,) bool: TDT rows whose next decision depends on the end of the stream
    final: bool  # whether ``end`` is the end of the utterance
    pred_proj: Tensor
    pred_state: Any
    # per decision: best (B,), logits (B, V + K) and the rows that took it (B,) bool; turned
    # into log-probabilities a block at a time (TransducerScorer.decision_log_probs)
    decisions: list[tuple[Tensor, Tensor, Tensor]]
    score: Tensor  # (B,) log-probability of the decisions already normalised


#: decisions kept before their log-probabilities are computed (bounds the logits kept)
_SCORE_BLOCK = 64


class LabelLoopingGreedy:
    """Greedy transducer search (RNN-T, or TDT with frame skipping).

    Args:
        head: a transducer head (``loss`` full/pruned for RNN-T, ``tdt`` for TDT).
        cfg: uses ``max_symbols_per_frame`` and ``blank_penalty``.
    """

    def __init__(self, head: TransducerHead, cfg: SearchConfig) -> None:
        self.scorer = TransducerScorer(head, cfg.blank_penalty)
        self.cfg = cfg

    @torch.no_grad()
    def init_state(self, batch_size: int, device: torch.device | str) -> TransducerGreedyState:
        """State of ``batch_size`` new streams."""
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
            hyp=TokenBuffer.empty(batch_size, device),
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
        device = enc_proj.device
        enc_lens = enc_lens.to(device, torch.int64)
        # pending frames first; one zero frame last, read (not used) by rows that have ended
        pieces = [
            state.pending.to(enc_proj.dtype),
            enc_proj,
            enc_proj.new_zeros(enc_proj.shape[0], 1, enc_proj.shape[2]),
        ]
        enc_proj = torch.cat(pieces if horizon else pieces[1:], dim=1)
        batch, width = enc_proj.shape[:2]
        base = torch.arange(batch, device=device) * width  # flat position of each row's frame 0
        end = base + horizon + enc_lens
        pos = base + horizon - state.num_pending
        masks = mask_pos = None
        if self.scorer.is_tdt:
            remaining = None
            if final:  # frames from each position to its row's end
                positions = torch.arange(batch * width, device=device)
                remaining = end.repeat_interleave(width) - positions
            masks = self.scorer.position_masks(remaining, batch * width, device)
            mask_pos = self._mask_pos(pos, state.count, batch * width)
        loop = _Loop(
            frames=enc_proj.reshape(batch * width, enc_proj.shape[-1]),
            masks=masks,
            output_bias=self.scorer.output_bias(device),
            pos=pos,
            mask_pos=mask_pos,
            end=end,
            count=state.count,
            zeros=torch.zeros_like(enc_lens),
            waiting=torch.zeros_like(enc_lens, dtype=torch.bool),
            final=final,
            pred_proj=state.pred_proj,
            pred_state=state.pred_state,
            decisions=[],
            score=torch.zeros(batch, device=device),
        )
        emitted: list[tuple[Tensor, Tensor, Tensor]] = []
        active = loop.pos < loop.end
        num_active = int(active.sum())
        while num_active:
            label, advance = self._next_token(loop, active, num_active)
            emit = self._live(loop)  # rows that found a token before the end
            num_emit = int(emit.sum())
            if not num_emit:
                break
            emitted.append((label, loop.pos, emit))
            every_row = num_emit == batch
            self._advance_after_token(loop, advance, emit, every_row)
            self._feed_predictor(loop, label, emit, every_row)
            if self.scorer.is_tdt:  # a TDT token lands before the end: its rows go on
                active, num_active = emit, num_emit
            else:
                active = self._live(loop)
                num_active = int(active.sum())
        self._score_decisions(loop)
        hyp = state.hyp
        if emitted:
            labels, positions, emits = (torch.stack(items, dim=1) for items in zip(*emitted))
            first_frame = state.frames_done - horizon  # absolute frame of position 0
            frames = positions + (first_frame - base)[:, None]
            hyp = hyp.extend(labels, frames, emits)
        hyp = hyp.add_score(loop.score)
        num_pending = (loop.end - loop.pos).clamp(min=0)
        pending = state.pending
        if horizon and not final:  # the last H frames of each row
            index = loop.end[:, None] - horizon + torch.arange(horizon, device=device)
            pending = loop.frames[index]
        return TransducerGreedyState(
            pred_proj=loop.pred_proj,
            pred_state=loop.pred_state,
            pending=pending,
            num_pending=num_pending,
            count=loop.count,
            frames_done=state.frames_done + enc_lens,
            hyp=hyp,
        )

    def _mask_pos(self, pos: Tensor, count: Tensor, num_positions: int) -> Tensor:
        """Row of the TDT position masks for each row's next decision: ``pos``, or
        ``pos + num_positions`` where the next token may not stay (``no_stay``)."""
        no_stay = count >= self.cfg.max_symbols_per_frame - 1
        return torch.add(pos, no_stay, alpha=num_positions)

    def _score_decisions(self, loop: _Loop) -> None:
        """Adds the log-probabilities of the decisions kept so far to ``loop.score``."""
        if loop.decisions:
            best, logits, taken = (torch.stack(items) for items in zip(*loop.decisions))
            log_probs = self.scorer.decision_log_probs(best, logits)
            loop.score = loop.score + torch.where(taken, log_probs, 0.0).sum(dim=0)
            loop.decisions = []

    @staticmethod
    def _live(loop: _Loop) -> Tensor:
        """(B,) rows still deciding: before their end and not waiting for the stream's end."""
        before_end = loop.pos < loop.end
        return before_end if loop.final else before_end & ~loop.waiting

    def _decide_at(self, loop: _Loop, deciding: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Decision (label, advance, is_blank) of every row at its frame, kept for the score of
        the ``deciding`` rows; TDT rows whose decision depends on the end of the stream (not
        ``final``) start waiting instead (and their decision is not kept). Rows that have
        ended read the zero frame after their frames and decide nothing that is used."""
        enc_frame = loop.frames.index_select(0, loop.pos)
        masks = remaining = None
        if loop.masks is not None:
            masks = loop.masks.index_select(0, loop.mask_pos)
            if loop.final and self.scorer.can_stop:
                remaining = loop.end - loop.pos
        label, advance, is_blank, best, logits = self.scorer.decide(
            enc_frame, loop.pred_proj, loop.output_bias, masks, remaining
        )
        if self.scorer.is_tdt and not loop.final:
            # allowed whatever the end: a token landing before it, a blank up to it
            left = loop.end - loop.pos
            certain = advance + ~is_blank <= left
            loop.waiting = loop.waiting | ((left > 0) & ~certain)
            deciding = deciding & ~loop.waiting
        loop.decisions.append((best, logits, deciding))
        if len(loop.decisions) >= _SCORE_BLOCK:
            self._score_decisions(loop)
        return label, advance, deciding & is_blank

    def _next_token(
        self, loop: _Loop, active: Tensor, num_active: int
    ) -> tuple[Tensor, Tensor]:
        """Inner loop: moves blank-choosing rows forward (joiner only) until each active row
        has a token, has reached its end or waits; returns the decision in force for every row
        (label, advance). Where every row moves, the per-row selections are skipped."""
        batch = active.shape[0]
        label, advance, blank = self._decide_at(loop, active)
        num_blank = int(blank.sum())
        while num_blank:
            every_row = num_blank == batch
            if every_row:
                loop.pos = loop.pos + advance
                loop.count = loop.zeros
            else:
                loop.pos = loop.pos + advance * blank
                loop.count = loop.count.masked_fill(blank, 0)
            if loop.mask_pos is not None:  # no token on the new frame yet
                moved = loop.pos
                if self.cfg.max_symbols_per_frame <= 1:  # a token may never stay
                    moved = moved + loop.frames.shape[0]
                loop.mask_pos = moved if every_row else torch.where(blank, moved, loop.mask_pos)
            deciding = blank & (loop.pos < loop.end)
            if not bool(deciding.any()):
                break
            new_label, new_advance, new_blank = self._decide_at(loop, deciding)
            if every_row:  # rows that ended decided nothing used (blank excludes them)
                label, advance, blank = new_label, new_advance, new_blank
            else:
                label = torch.where(deciding, new_label, label)
                advance = torch.where(deciding, new_advance, advance)
                blank = new_blank
            num_blank = int(blank.sum())
        return label, advance

    def _advance_after_token(
        self, loop: _Loop, advance: Tensor, emit: Tensor, every_row: bool
    ) -> None:
        """Moves emitting rows by the token's duration; counts tokens on a frame. RNN-T moves
        by one frame after ``max_symbols_per_frame`` of them; TDT never needs to (the masks
        exclude duration 0 for the last one). Other rows keep their pointer and count."""
        if self.scorer.is_tdt:
            count = (loop.count + 1) * (advance == 0)  # tokens on this frame; 0 once it moves
        else:  # a token stays, unless it is the max_symbols_per_frame-th
            count = loop.count + 1
            advance = count >= self.cfg.max_symbols_per_frame
            count = count.masked_fill(advance, 0)
        if every_row:
            loop.count, loop.pos = count, loop.pos + advance
        else:
            loop.count = torch.where(emit, count, loop.count)
            loop.pos = loop.pos + advance * emit
        if loop.mask_pos is not None:
            loop.mask_pos = self._mask_pos(loop.pos, loop.count, loop.frames.shape[0])

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
        state = self.init_state(enc.shape[0], enc.device)
        state = self._run(self.scorer.project_encoder(enc), enc_lens, state, final=True)
        return [[hyp] for hyp in state.hyp.hypotheses()]
