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

Streaming: the same :meth:`LabelLoopingGreedy.step` consumes a chunk of frames; the frames a
TDT duration jumped past the end of the chunk are carried in the state (``skip``) and skipped at
the start of the next chunk, and frames are absolute (``frames_done`` + frame in chunk). The
offline search is that step run on all frames.

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
        skip: (B,) int64 frames of the next chunk already covered by a TDT duration.
        frames_done: (B,) int64 encoder frames consumed so far.
        hyp: emitted tokens, frames and score.
    """

    pred_proj: Tensor = state_field(batch_dim=0)
    pred_state: Any
    skip: Tensor = state_field(batch_dim=0)
    frames_done: Tensor = state_field(batch_dim=0)
    hyp: TokenBuffer


@dataclass
class _Loop:
    """Mutable per-chunk loop variables (never stored: the state stays frozen)."""

    rows: Tensor  # (B,) arange, for gathering each row's frame
    t: Tensor  # (B,) frame pointer within the chunk
    count: Tensor  # (B,) tokens emitted on the current frame
    pred_proj: Tensor
    pred_state: Any
    scores: list[Tensor]  # (B,) log-probability of each decision (0 where a row did not decide)


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
        return TransducerGreedyState(
            pred_proj=pred_proj,
            pred_state=pred_state,
            skip=zeros,
            frames_done=zeros.clone(),
            hyp=TokenBuffer.empty(batch_size, capacity or self.cfg.max_stream_tokens, device),
        )

    @torch.no_grad()
    def step(
        self, enc: Tensor, enc_lens: Tensor, state: TransducerGreedyState
    ) -> TransducerGreedyState:
        """Consumes a chunk: enc (B, T, D), enc_lens (B,) valid frames of it."""
        check_encoder_output(enc, enc_lens)
        enc_lens = enc_lens.to(enc.device, torch.int64)
        enc_proj = self.scorer.project_encoder(enc)
        loop = _Loop(
            rows=torch.arange(enc.shape[0], device=enc.device),
            t=state.skip.clone(),
            count=torch.zeros_like(state.skip),
            pred_proj=state.pred_proj,
            pred_state=state.pred_state,
            scores=[],
        )
        emitted: list[tuple[Tensor, Tensor, Tensor]] = []
        active = loop.t < enc_lens
        while bool(active.any()):
            label, advance, log_prob = self._next_token(enc_proj, enc_lens, loop, active)
            emit = loop.t < enc_lens  # rows that found a token before the end of the chunk
            loop.scores.append(torch.where(emit, log_prob, 0.0))
            emitted.append((label, loop.t, emit))
            self._advance_after_token(loop, advance, emit)
            num_emitted = int(emit.sum())
            if num_emitted:
                self._feed_predictor(loop, label, emit, every_row=num_emitted == emit.shape[0])
            active = loop.t < enc_lens
        hyp = state.hyp
        if emitted:
            labels, frames, emits = (torch.stack(items, dim=1) for items in zip(*emitted))
            hyp = hyp.extend(labels, state.frames_done[:, None] + frames, emits)
        if loop.scores:
            hyp = hyp.add_score(torch.stack(loop.scores).sum(dim=0))
        return TransducerGreedyState(
            pred_proj=loop.pred_proj,
            pred_state=loop.pred_state,
            skip=(loop.t - enc_lens).clamp(min=0),
            frames_done=state.frames_done + enc_lens,
            hyp=hyp,
        )

    def _decide_at(self, enc_proj: Tensor, loop: _Loop) -> tuple[Tensor, Tensor, Tensor]:
        frame = loop.t.clamp(max=enc_proj.shape[1] - 1)
        if not self.scorer.is_tdt:
            return self.scorer.decide(enc_proj[loop.rows, frame], loop.pred_proj)
        no_stay = loop.count >= self.cfg.max_symbols_per_frame - 1
        return self.scorer.decide(enc_proj[loop.rows, frame], loop.pred_proj, no_stay)

    def _next_token(
        self, enc_proj: Tensor, enc_lens: Tensor, loop: _Loop, active: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Inner loop: moves blank-choosing rows forward (joiner only) until each active row
        has a token or has passed the end; returns the decision in force for every row."""
        label, advance, log_prob = self._decide_at(enc_proj, loop)
        blank = active & (label == self.scorer.blank_id)
        while bool(blank.any()):
            loop.scores.append(torch.where(blank, log_prob, 0.0))
            loop.t = loop.t + advance * blank
            loop.count = loop.count.masked_fill(blank, 0)
            moved = blank & (loop.t < enc_lens)
            if not bool(moved.any()):
                break
            new_label, new_advance, new_log_prob = self._decide_at(enc_proj, loop)
            label = torch.where(moved, new_label, label)
            advance = torch.where(moved, new_advance, advance)
            log_prob = torch.where(moved, new_log_prob, log_prob)
            blank = moved & (label == self.scorer.blank_id)
        return label, advance, log_prob

    def _advance_after_token(self, loop: _Loop, advance: Tensor, emit: Tensor) -> None:
        """Moves emitting rows by the token's duration; counts tokens on a frame. RNN-T moves
        by one frame after ``max_symbols_per_frame`` of them; TDT never needs to (the masks
        exclude duration 0 for the last one).

        Rows that did not emit have passed the end of the chunk: their count is not used again
        (it is not carried to the next chunk), their pointer must stay exact (``skip``)."""
        count = (loop.count + 1) * (advance == 0)  # tokens on this frame; 0 once the row moves
        if not self.scorer.is_tdt:
            forced = count >= self.cfg.max_symbols_per_frame
            count = count.masked_fill(forced, 0)
            advance = advance + forced
        loop.count = count
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

    def finalize(self, state: TransducerGreedyState) -> list[Hypothesis]:
        """Same as :meth:`partial`: the greedy search keeps nothing pending."""
        return state.hyp.hypotheses()

    def __call__(self, enc: Tensor, enc_lens: Tensor) -> list[list[Hypothesis]]:
        """Offline search: one step over all frames. enc (B, T, D), enc_lens (B,)."""
        capacity = max(enc.shape[1] * self.cfg.max_symbols_per_frame, 1)
        state = self.init_state(enc.shape[0], enc.device, capacity=capacity)
        return [[hyp] for hyp in self.finalize(self.step(enc, enc_lens, state))]
