"""Modified beam search for RNN-T: at most one symbol per frame per hypothesis, batched.

Kuang et al. 2022, "Pruned RNN-T for fast, memory-efficient ASR training" (arXiv:2206.13236)
and the k2/icefall ``modified_beam_search`` (also Kang et al. 2023, "Fast and parallel decoding
for transducer", arXiv:2211.00484): the search is frame-synchronous; on frame t every hypothesis
either takes blank or emits exactly one token, the ``beam_size`` best of those ``K * V``
continuations are kept per utterance, and continuations with the same token sequence are merged
(log-add of their scores). Graves 2012 (arXiv:1211.3711) is the transducer itself.

With ``beam_size = 1`` this is greedy search with ``max_symbols_per_frame = 1``.

Shallow fusion (Gulcehre et al. 2015, arXiv:1503.03535; the icefall
``modified_beam_search_lm_shallow_fusion`` convention): with a token LM every emitted token adds
``lm_weight * log P_lm(token | history)`` to the hypothesis score, which ranks and prunes the
beam; blanks add nothing. The final ranking adds ``lm_weight * log P_lm(</s> | history)``.
Merged hypotheses share their token sequence and so their LM score: the log-add of the AM
scores is unchanged by it.

Length normalisation and insertion bonus (:class:`~asr.decoding.config.SearchConfig`): every
emitted token adds ``insertion_bonus`` to the score (with or without an LM; merged hypotheses
share it), so it acts on the pruning of every frame and on the final ranking; the finished
hypotheses are then ranked by ``score / (L + 1) ** length_norm`` (icefall's ``length_norm``:
every hypothesis has read the same frames, so only the final ranking is normalised). Both 0:
the raw fused log-probability, as without them.

Contextual biasing (:mod:`asr.decoding.context_graph`): with a hotword graph each hypothesis
carries its graph state, every one-token expansion adds the graph's bonus before the top-k
(blank adds nothing), and the final ranking adds the graph's ``finalize`` (an unfinished partial
match gives its boost back). Merged hypotheses share their tokens, so their graph state.

Batched: the hypotheses of all utterances still inside their frames are one tensor batch for
the joiner and the predictor on every frame; the per-utterance top-k runs on a padded
(utterances, K * V) matrix; only the bookkeeping of the kept hypotheses (token tuples, merging)
is Python.

Shape legend: B batch, N live hypotheses (all utterances), T frames, D encoder dims, J joiner
dims, V vocabulary incl. blank, K beam size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from asr.decoding.base import (
    check_encoder_output,
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

__all__ = ["ModifiedBeamSearch", "topk_per_group"]


@dataclass(frozen=True)
class _Hyp:
    tokens: tuple[int, ...]
    frames: tuple[int, ...]
    score: float  # AM + lm_weight * LM log-probability + insertion_bonus per token
    owner: int  # utterance index in the batch
    lm_state: Hashable = None
    context: int = 0  # hotword graph state


def topk_per_group(scores: Tensor, owners: Tensor, num_groups: int, k: int) -> list[list[int]]:
    """The ``k`` best finite entries of each group of rows.

    Args:
        scores: (N, V) candidate scores. owners: (N,) group of each row, sorted ascending.
        num_groups: G. k: entries per group.

    Returns:
        per group, flat indices ``row * V + column`` into ``scores``, best first.
    """
    num_rows, width = scores.shape
    counts = torch.bincount(owners, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    max_rows = int(counts.max()) if num_rows else 0
    slot = torch.arange(num_rows, device=scores.device) - starts[owners]
    padded = scores.new_full((num_groups, max_rows, width), float("-inf"))
    padded[owners, slot] = scores
    rows = torch.full((num_groups, max_rows), -1, dtype=torch.long, device=scores.device)
    rows[owners, slot] = torch.arange(num_rows, device=scores.device)
    flat = padded.view(num_groups, max_rows * width)
    values, index = flat.topk(min(k, flat.shape[1]), dim=1)
    picked_rows = rows.gather(1, index // width)
    chosen = picked_rows * width + index % width
    result = []
    for group_values, group_chosen in zip(values.tolist(), chosen.tolist()):
        result.append([c for v, c in zip(group_values, group_chosen) if v > float("-inf")])
    return result


class ModifiedBeamSearch:
    """Batched modified beam search over an RNN-T head.

    Args:
        head: a transducer head with ``loss`` full or pruned.
        cfg: uses ``beam_size``, ``nbest``, ``blank_penalty``, ``lm_weight``,
            ``insertion_bonus`` and ``length_norm``.
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
        self.cfg = cfg
        self.lm = fusion_lm(lm, cfg.lm_weight, head.vocab_size, "transducer head")
        self.context = context
        self._bonus: dict[torch.device, Tensor] = {}

    @torch.no_grad()
    def __call__(self, enc: Tensor, enc_lens: Tensor) -> list[list[Hypothesis]]:
        """enc (B, T, D), enc_lens (B,) -> per utterance the n-best, best first."""
        check_encoder_output(enc, enc_lens)
        batch = enc.shape[0]
        lens = enc_lens.tolist()
        enc_proj = self.scorer.project_encoder(enc)
        pred_proj, pred_state = self.scorer.initial(batch, enc.device)
        lm_start = self.lm.init_state() if self.lm is not None else None
        hyps = [_Hyp((), (), 0.0, b, lm_start) for b in range(batch)]
        finished: list[list[_Hyp]] = [[] for _ in range(batch)]
        for frame in range(enc.shape[1] + 1):
            alive = [i for i, hyp in enumerate(hyps) if frame < lens[hyp.owner]]
            for hyp in hyps:
                if frame >= lens[hyp.owner]:
                    finished[hyp.owner].append(hyp)
            if not alive:
                break
            if len(alive) != len(hyps):
                hyps = [hyps[i] for i in alive]
                pred_proj = pred_proj[alive]
                pred_state = select_states(pred_state, alive)
            hyps, pred_proj, pred_state = self._frame(enc_proj, frame, hyps, pred_proj, pred_state)
        return [self._nbest(utterance) for utterance in finished]

    def _frame(
        self, enc_proj: Tensor, frame: int, hyps: list[_Hyp], pred_proj: Tensor, pred_state: Any
    ) -> tuple[list[_Hyp], Tensor, Any]:
        """Expands every live hypothesis by blank or one token on ``frame``; keeps K per
        utterance; merges equal token sequences."""
        device = enc_proj.device
        owners = torch.tensor([hyp.owner for hyp in hyps], device=device)
        scores = torch.tensor([hyp.score for hyp in hyps], device=device, dtype=torch.float32)
        token_lp, _ = self.scorer.log_probs(enc_proj[owners, frame], pred_proj)
        candidates = scores[:, None] + token_lp  # (N, V)
        if self.lm is not None:
            lm_lp = torch.stack([self.lm.score(hyp.lm_state) for hyp in hyps]).to(device)
            lm_lp[:, self.scorer.blank_id] = 0.0  # blank is not a token of the LM
            candidates = candidates + self.cfg.lm_weight * lm_lp
        if self.cfg.insertion_bonus:
            candidates = candidates + self._bonus_row(device)
        if self.context is not None:
            states = torch.tensor([hyp.context for hyp in hyps], device=device)
            candidates = candidates + self.context.deltas(states)
        # owners are contiguous and ascending; map them to 0..G-1 for the grouped top-k
        groups, group_of = torch.unique_consecutive(owners, return_inverse=True)
        picks = topk_per_group(candidates, group_of, len(groups), self.cfg.beam_size)
        vocab = candidates.shape[1]
        flat_scores = candidates.view(-1).tolist()
        kept: dict[tuple[int, tuple[int, ...]], int] = {}
        new_hyps: list[_Hyp] = []
        parents: list[int] = []
        labels: list[int] = []
        for group in picks:
            for flat in group:
                row, label = divmod(flat, vocab)
                parent = hyps[row]
                score = flat_scores[flat]
                emit = label != self.scorer.blank_id
                tokens = parent.tokens + (label,) if emit else parent.tokens
                key = (parent.owner, tokens)
                if key in kept:  # same sequence reached twice: log-add the scores
                    index = kept[key]
                    old = new_hyps[index]
                    merged = log_add(old.score, score)
                    new_hyps[index] = dataclasses.replace(old, score=merged)
                    continue
                kept[key] = len(new_hyps)
                frames = parent.frames + (frame,) if emit else parent.frames
                lm_state, context = parent.lm_state, parent.context
                if emit and self.lm is not None:
                    lm_state = self.lm.advance(lm_state, label)
                if emit and self.context is not None:
                    context = self.context.step(context, label)[1]
                new_hyps.append(_Hyp(tokens, frames, score, parent.owner, lm_state, context))
                parents.append(row)
                labels.append(label)
        parent_index = torch.tensor(parents, device=device)
        label_tensor = torch.tensor(labels, device=device)
        pred_proj = pred_proj[parent_index]
        pred_state = select_states(pred_state, parent_index)
        emit = label_tensor != self.scorer.blank_id
        if bool(emit.any()):
            new_proj, new_state = self.scorer.predict(label_tensor, pred_state)
            pred_proj = torch.where(emit[:, None], new_proj, pred_proj)
            pred_state = where_state(emit, new_state, pred_state)
        return new_hyps, pred_proj, pred_state

    def _bonus_row(self, device: torch.device) -> Tensor:
        """(V,) ``insertion_bonus`` for every token, 0 for blank (cached per device)."""
        if device not in self._bonus:
            self._bonus[device] = insertion_bonuses(
                self.scorer.vocab_size, self.scorer.blank_id, self.cfg.insertion_bonus, device
            )
        return self._bonus[device]

    def _final_score(self, hyp: _Hyp) -> float:
        """The ranking score: with the LM's end of sentence, length-normalised."""
        score = hyp.score
        if self.lm is not None:
            score += self.cfg.lm_weight * self.lm.final_score(hyp.lm_state)
        if self.context is not None:
            score += self.context.finalize(hyp.context)
        return rank_score(score, len(hyp.tokens), self.cfg.length_norm)

    def _nbest(self, hyps: list[_Hyp]) -> list[Hypothesis]:
        # best first; hypotheses that cannot end (-inf) after the others, by their score so far
        scored = sorted(
            ((self._final_score(h), h) for h in hyps),
            key=lambda p: (p[0], rank_score(p[1].score, len(p[1].tokens), self.cfg.length_norm)),
            reverse=True,
        )
        if not scored:
            return [Hypothesis(tokens=())]
        return [
            Hypothesis(tokens=h.tokens, score=score, frames=h.frames)
            for score, h in scored[: self.cfg.nbest]
        ]
