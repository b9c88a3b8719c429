"""CTC greedy (best path) search, offline and streaming (Graves et al. 2006, "Connectionist
Temporal Classification: Labelling Unsegmented Sequence Data with Recurrent Neural Networks").

The best path takes the most likely label of every frame, then merges repeats and removes blanks.
A token's timestamp is the first frame of its run. The score is the log-probability of that path
(not of the labelling: that is what :mod:`asr.decoding.ctc_prefix_beam` computes).

Offline search is the streaming step applied to all frames at once: one implementation, no loop
over frames (argmax, repeat mask and a cumulative-sum scatter are all vectorised).

Shape legend: B batch (streams), T frames, D encoder dims, V vocabulary incl. blank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from asr.decoding.base import TokenBuffer, check_encoder_output
from asr.decoding.config import SearchConfig
from asr.heads.ctc import CTCHead
from asr.state import state_field
from asr.types import Hypothesis

__all__ = ["CtcGreedySearcher", "CtcGreedyState", "ctc_log_probs"]


def ctc_log_probs(head: CTCHead, enc: Tensor, blank_penalty: float = 0.0) -> Tensor:
    """(B, T, D) -> (B, T, V) float32 log-probabilities, blank logit lowered by
    ``blank_penalty``."""
    logits = head.logits(enc).float()
    if blank_penalty:
        logits = logits.clone()
        logits[..., head.blank_id] -= blank_penalty
    return torch.log_softmax(logits, dim=-1)


@dataclass(frozen=True)
class CtcGreedyState:
    """Streaming state of :class:`CtcGreedySearcher`.

    Attributes:
        last_label: (B,) int64 best label of the previous frame (blank at the start), so a run
            continuing across a chunk boundary is merged.
        frames_done: (B,) int64 encoder frames consumed so far (absolute timestamp offset).
        hyp: emitted tokens, frames and path score.
    """

    last_label: Tensor = state_field(batch_dim=0)
    frames_done: Tensor = state_field(batch_dim=0)
    hyp: TokenBuffer


class CtcGreedySearcher:
    """Best-path CTC search (a :class:`~asr.decoding.base.Searcher` and a streaming searcher).

    Args:
        head: the model's CTC head.
        cfg: uses ``blank_penalty``.
    """

    def __init__(self, head: CTCHead, cfg: SearchConfig) -> None:
        self.head = head
        self.cfg = cfg

    @torch.no_grad()
    def init_state(self, batch_size: int, device: torch.device | str) -> CtcGreedyState:
        """State of ``batch_size`` new streams."""
        zeros = torch.zeros(batch_size, dtype=torch.int64, device=device)
        return CtcGreedyState(
            last_label=zeros + self.head.blank_id,
            frames_done=zeros.clone(),
            hyp=TokenBuffer.empty(batch_size, device),
        )

    @torch.no_grad()
    def step(self, enc: Tensor, enc_lens: Tensor, state: CtcGreedyState) -> CtcGreedyState:
        """Consumes a chunk: enc (B, T, D), enc_lens (B,) valid frames of it."""
        check_encoder_output(enc, enc_lens)
        enc_lens = enc_lens.to(enc.device, torch.int64)
        log_probs = ctc_log_probs(self.head, enc, self.cfg.blank_penalty)
        best_lp, labels = log_probs.max(dim=-1)  # (B, T)
        valid = torch.arange(enc.shape[1], device=enc.device)[None, :] < enc_lens[:, None]
        previous = torch.cat([state.last_label[:, None], labels[:, :-1]], dim=1)
        emit = valid & (labels != self.head.blank_id) & (labels != previous)
        frames = state.frames_done[:, None] + torch.arange(enc.shape[1], device=enc.device)
        # where, not a product: 0 * nan (padding garbage) is nan
        path_lp = torch.where(valid, best_lp, 0.0).sum(dim=1)
        hyp = state.hyp.extend(labels, frames, emit).add_score(path_lp)
        last = state.last_label
        if enc.shape[1]:
            final = labels.gather(1, (enc_lens - 1).clamp(min=0)[:, None]).squeeze(1)
            last = torch.where(enc_lens > 0, final, last)
        return CtcGreedyState(last, state.frames_done + enc_lens, hyp)

    def partial(self, state: CtcGreedyState) -> list[Hypothesis]:
        """Best path so far, per stream."""
        return state.hyp.hypotheses()

    def finalize(self, state: CtcGreedyState) -> list[Hypothesis]:
        """Same as :meth:`partial`: greedy CTC keeps nothing pending."""
        return state.hyp.hypotheses()

    def __call__(self, enc: Tensor, enc_lens: Tensor) -> list[list[Hypothesis]]:
        """Offline search: one step over all frames. enc (B, T, D), enc_lens (B,)."""
        state = self.init_state(enc.shape[0], enc.device)
        return [[hyp] for hyp in self.finalize(self.step(enc, enc_lens, state))]
