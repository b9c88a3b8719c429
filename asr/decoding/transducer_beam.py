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
(utterances, K * V) matrix; only the bookkeeping of the kept hypotheses (their tokens, merging)
is Python, O(1) per kept hypothesis however many tokens it holds: its tokens are a
:class:`~asr.decoding.base.TokenChain`, extended and hashed without copying the tokens before.

Streaming (:meth:`ModifiedBeamSearch.step`): the search is frame-synchronous and never looks
ahead, so a chunk continues each stream's beam where the last one left it. A stream's beam (its
hypotheses with absolute token frames, scores, LM and graph states, and their rows of the
predictor's projection and state) is its :class:`~asr.decoding.base.StreamBeam` in a
:class:`~asr.decoding.base.BeamState`, so streams at different positions, each with its own
hotword graph or none, share a batch. The offline search is one step over all frames, so
streaming results equal offline ones: the same moves on the same scores, up to the rounding of the
encoder frames' joiner projection, which a BLAS may sum in another order for a chunk's few rows than
for all frames (last-bit score differences on some CPUs); a partial result is what ``finalize``
would give.

Shape legend: B batch, N live hypotheses (all utterances), T frames, D encoder dims, J joiner
dims, V vocabulary incl. blank, K beam size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
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
from asr.state import select_states, stack_states
from asr.types import Hypothesis

__all__ = ["ModifiedBeamSearch", "topk_per_group"]


@dataclass(frozen=True)
class _Hyp:
    tokens: TokenChain  # with the absolute encoder frame of each token
    score: float  # AM + lm_weight * LM log-probability + insertion_bonus per token + hotwords
    lm_state: Hashable = None
    context: int = 0  # hotword graph state


def topk_per_group(
    scores: Tensor, owners: Tensor, num_groups: int, k: int
) -> list[list[tuple[int, float]]]:
    """The ``k`` best finite entries of each group of rows.

    Args:
        scores: (N, V) candidate scores. owners: (N,) group of each row, sorted ascending.
        num_groups: G. k: entries per group.

    Returns:
        per group, its entries best first as ``(row * V + column, score)``: flat indices into
        ``scores`` and their values (one host transfer of the G * k picks, not of ``scores``).
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
    # float64 holds every float32 score and every index below 2**53 exactly: one transfer
    both = torch.stack([values.double(), chosen.double()]).tolist()
    result = []
    for group_values, group_chosen in zip(*both):
        result.append(
            [(int(c), v) for v, c in zip(group_values, group_chosen) if v > float("-inf")]
        )
    return result


class ModifiedBeamSearch(StreamingBeamSearch):
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
        """enc (B, T, D), enc_lens (B,) -> per utterance the n-best, best first: the
        streaming search in one step over all frames."""
        state = self.step(enc, enc_lens, self.init_state(enc.shape[0], enc.device))
        return [self._nbest(beam) for beam in state.beams]

    def _new_beams(
        self, graphs: list[ContextGraph | None], device: torch.device | str
    ) -> tuple[StreamBeam, ...]:
        """A beam per stream: the start hypothesis and its rows of the predictor's start."""
        pred_proj, pred_state = self.scorer.initial(len(graphs), device)
        start = _Hyp(EMPTY_CHAIN, 0.0, self.lm.init_state() if self.lm is not None else None)
        return tuple(
            StreamBeam((start,), 0, graph, pred_proj[b : b + 1], select_states(pred_state, [b]))
            for b, graph in enumerate(graphs)
        )

    def _step(
        self, enc: Tensor, lens: list[int], beams: tuple[StreamBeam, ...]
    ) -> tuple[StreamBeam, ...]:
        return self._run(self.scorer.project_encoder(enc), lens, beams)

    def partial(self, state: BeamState) -> list[Hypothesis]:
        """Per stream the hypothesis :meth:`finalize` would give if it ended now."""
        return self.finalize(state)

    def finalize(self, state: BeamState) -> list[Hypothesis]:
        """Per stream its best hypothesis (LM end of sentence and hotword ``finalize`` added,
        length-normalised)."""
        return [self._nbest(beam)[0] for beam in state.beams]

    def _run(
        self, enc_proj: Tensor, lens: list[int], beams: Sequence[StreamBeam]
    ) -> tuple[StreamBeam, ...]:
        """Searches the frames ``enc_proj (B, T, J)`` (``lens[b]`` valid ones) from ``beams``:
        the hypotheses of every stream still inside its frames are one batch on each frame."""
        out = list(beams)
        live = [b for b in range(len(beams)) if lens[b] > 0]
        if not live:
            return tuple(out)
        hyps = [hyp for b in live for hyp in beams[b].hyps]
        owners = [b for b in live for _ in beams[b].hyps]
        pred_proj = torch.cat([beams[b].pred_proj for b in live])
        pred_state = stack_states([beams[b].pred_state for b in live])
        for frame in range(max(lens)):
            ending = [b for b in live if lens[b] == frame]
            if ending:  # streams at the end of their frames keep their beams
                for b in ending:
                    out[b] = self._beam_of(b, beams[b], hyps, owners, pred_proj, pred_state, frame)
                live = [b for b in live if lens[b] > frame]
                alive = [i for i, owner in enumerate(owners) if lens[owner] > frame]
                hyps = [hyps[i] for i in alive]
                owners = [owners[i] for i in alive]
                pred_proj = pred_proj[alive]
                pred_state = select_states(pred_state, alive)
            hyps, owners, pred_proj, pred_state = self._frame(
                enc_proj, frame, beams, hyps, owners, pred_proj, pred_state
            )
        for b in live:
            out[b] = self._beam_of(b, beams[b], hyps, owners, pred_proj, pred_state, lens[b])
        return tuple(out)

    @staticmethod
    def _beam_of(
        stream: int,
        beam: StreamBeam,
        hyps: list[_Hyp],
        owners: list[int],
        pred_proj: Tensor,
        pred_state: Any,
        frames_read: int,
    ) -> StreamBeam:
        """The new beam of ``stream`` from its rows of the search's batch."""
        rows = [i for i, owner in enumerate(owners) if owner == stream]
        return StreamBeam(
            tuple(hyps[i] for i in rows),
            beam.frames_done + frames_read,
            beam.context,
            pred_proj[rows],
            select_states(pred_state, rows),
        )

    def _frame(
        self,
        enc_proj: Tensor,
        frame: int,
        beams: Sequence[StreamBeam],
        hyps: list[_Hyp],
        owners: list[int],
        pred_proj: Tensor,
        pred_state: Any,
    ) -> tuple[list[_Hyp], list[int], Tensor, Any]:
        """Expands every live hypothesis by blank or one token on ``frame`` of the chunk; keeps
        K per stream; merges equal token sequences."""
        device = enc_proj.device
        owner_index = torch.tensor(owners, device=device)
        scores = torch.tensor([hyp.score for hyp in hyps], device=device, dtype=torch.float32)
        token_lp, _ = self.scorer.log_probs(enc_proj[owner_index, frame], pred_proj)
        candidates = scores[:, None] + token_lp  # (N, V)
        if self.lm is not None:
            lm_lp = torch.stack([self.lm.score(hyp.lm_state) for hyp in hyps]).to(device)
            lm_lp[:, self.scorer.blank_id] = 0.0  # blank is not a token of the LM
            candidates = candidates + self.cfg.lm_weight * lm_lp
        if self.cfg.insertion_bonus:
            candidates = candidates + self._bonus_row(device)
        graphs = [beams[owner].context for owner in owners]
        if any(graph is not None for graph in graphs):
            candidates = candidates + _graph_deltas(graphs, hyps, candidates)
        # owners are contiguous and ascending; map them to 0..G-1 for the grouped top-k
        groups, group_of = torch.unique_consecutive(owner_index, return_inverse=True)
        picks = topk_per_group(candidates, group_of, len(groups), self.cfg.beam_size)
        vocab = candidates.shape[1]
        kept: dict[tuple[int, TokenChain], int] = {}
        new_hyps: list[_Hyp] = []
        new_owners: list[int] = []
        parents: list[int] = []
        labels: list[int] = []
        for group in picks:
            for flat, score in group:
                row, label = divmod(flat, vocab)
                parent, owner = hyps[row], owners[row]
                emit = label != self.scorer.blank_id
                tokens = parent.tokens
                if emit:
                    tokens = tokens.push(label, beams[owner].frames_done + frame)
                key = (owner, tokens)
                if key in kept:  # same sequence reached twice: log-add the scores
                    index = kept[key]
                    old = new_hyps[index]
                    merged = log_add(old.score, score)
                    new_hyps[index] = dataclasses.replace(old, score=merged)
                    continue
                kept[key] = len(new_hyps)
                lm_state, context = parent.lm_state, parent.context
                if emit and self.lm is not None:
                    lm_state = self.lm.advance(lm_state, label)
                if emit and graphs[row] is not None:
                    context = graphs[row].step(context, label)[1]
                new_hyps.append(_Hyp(tokens, score, lm_state, context))
                new_owners.append(owner)
                parents.append(row)
                labels.append(label)
        parent_index = torch.tensor(parents, device=device, dtype=torch.long)
        label_tensor = torch.tensor(labels, device=device, dtype=torch.long)
        pred_proj = pred_proj[parent_index]
        pred_state = select_states(pred_state, parent_index)
        emit = label_tensor != self.scorer.blank_id
        if bool(emit.any()):
            new_proj, new_state = self.scorer.predict(label_tensor, pred_state)
            pred_proj = torch.where(emit[:, None], new_proj, pred_proj)
            pred_state = where_state(emit, new_state, pred_state)
        return new_hyps, new_owners, pred_proj, pred_state

    def _bonus_row(self, device: torch.device) -> Tensor:
        """(V,) ``insertion_bonus`` for every token, 0 for blank (cached per device)."""
        if device not in self._bonus:
            self._bonus[device] = insertion_bonuses(
                self.scorer.vocab_size, self.scorer.blank_id, self.cfg.insertion_bonus, device
            )
        return self._bonus[device]

    def _final_score(self, hyp: _Hyp, context: ContextGraph | None) -> float:
        """The ranking score: with the LM's end of sentence and the hotword graph's
        ``finalize``, length-normalised."""
        score = hyp.score
        if self.lm is not None:
            score += self.cfg.lm_weight * self.lm.final_score(hyp.lm_state)
        if context is not None:
            score += context.finalize(hyp.context)
        return rank_score(score, len(hyp.tokens), self.cfg.length_norm)

    def _final_nbest(self, beam: StreamBeam) -> list[Hypothesis]:
        return self._nbest(beam)

    def _nbest(self, beam: StreamBeam) -> list[Hypothesis]:
        # best first; hypotheses that cannot end (-inf) after the others, by their score so far
        scored = sorted(
            ((self._final_score(h, beam.context), h) for h in beam.hyps),
            key=lambda p: (p[0], rank_score(p[1].score, len(p[1].tokens), self.cfg.length_norm)),
            reverse=True,
        )
        if not scored:
            return [Hypothesis(tokens=())]
        return [h.tokens.hypothesis(score) for score, h in scored[: self.cfg.nbest]]


def _graph_deltas(
    graphs: list[ContextGraph | None], hyps: list[_Hyp], candidates: Tensor
) -> Tensor:
    """(N, V) hotword bonuses of every one-token expansion of ``hyps``, each row by the graph of
    its stream (``graphs``, one per row; rows without a graph get 0)."""
    states = torch.tensor([hyp.context for hyp in hyps], device=candidates.device)
    first = graphs[0]
    if first is not None and all(graph is first for graph in graphs):
        return first.deltas(states)
    deltas = torch.zeros_like(candidates)
    for graph in {id(g): g for g in graphs if g is not None}.values():
        rows = torch.tensor([i for i, g in enumerate(graphs) if g is graph], device=states.device)
        deltas[rows] = graph.deltas(states[rows])
    return deltas
