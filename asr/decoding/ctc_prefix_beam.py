"""CTC prefix beam search with optional shallow fusion of a token LM.

Graves 2012, "Supervised Sequence Labelling with Recurrent Neural Networks" (prefix search,
section 7.5); Hannun et al. 2014, "First-Pass Large Vocabulary Continuous Speech Recognition
using Bi-Directional Recurrent DNNs" (arXiv:1408.2873, the prefix beam search with an LM).

Each prefix keeps two log-probabilities over the frames read so far: of all alignments that
produce it and end in blank (``blank``) and end in its last token (``label``). On frame t with
label log-probs ``x``:

* blank: ``blank'(h) += (blank(h) + label(h)) + x[blank]``;
* the last token c of h again: ``label'(h) += label(h) + x[c]`` (a repeat merges) and
  ``label'(h c) += blank(h) + x[c]`` (a new token after a blank);
* another token c: ``label'(h c) += (blank(h) + label(h)) + x[c]``.

Prefixes are ranked by ``log(P_ctc(h)) + lm_weight * log P_lm(h)`` and the ``beam_size`` best
are kept; with a beam as large as the number of prefixes the result is the exact CTC
probability of every labelling (the test compares it with exhaustive enumeration). Per frame
only the ``beam_size`` most likely labels are expanded (all of them that can keep a prefix,
blank among them, on a frame where the LM forbids every prefix those make, so that every
prefix's score still has that frame's probability). At the end the LM's end-of-sentence
probability is added. With ``insertion_bonus`` every token of a prefix adds that bonus to its
ranking score (each frame's pruning and the final ranking), and with ``length_norm`` the final
ranking divides the score by ``(L + 1) ** length_norm``
(:class:`~asr.decoding.config.SearchConfig`); both 0 leave the ranking above. A token's
timestamp is the frame at which the most probable alignment contributing to the prefix emitted
it: beside the two sums, each prefix keeps the log-probability of its best alignment ending in
blank and of its best ending in its last token (the same recursion with max for log-add), with
their token frames. Prefixes and those frames are :class:`~asr.decoding.base.TokenChain` s, so
extending a prefix and looking it up cost O(1) however long it is.

Contextual biasing (:mod:`asr.decoding.context_graph`): with a hotword graph each prefix
carries its graph state and the sum of the graph's bonuses along its tokens, which its ranking
score adds (each frame's pruning and the final ranking, where the graph's ``finalize`` gives an
unfinished partial match's boost back); the CTC probabilities themselves are unchanged.

Streaming (:meth:`CtcPrefixBeamSearch.step`): the search is frame-synchronous and needs no
future frame, so a stream's prefixes (with their accumulators, LM and graph states) are its
:class:`~asr.decoding.base.StreamBeam` in a :class:`~asr.decoding.base.BeamState`, and a chunk
continues them; the offline search is one step over all frames, so streaming results equal
offline ones exactly. (A prefix caches its LM's next-token scores on first use; the cache is a
pure function of its LM state, so sharing a state between two continuations is harmless.)

Shape legend: B batch, T frames, D encoder dims, V vocabulary incl. blank.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from asr.decoding.base import (
    EMPTY_CHAIN,
    BeamState,
    StreamBeam,
    StreamingBeamSearch,
    TokenChain,
    log_add,
    rank_score,
)
from asr.decoding.config import SearchConfig
from asr.decoding.context_graph import ContextGraph
from asr.decoding.ctc_greedy import ctc_log_probs
from asr.decoding.lm import LanguageModel, fusion_lm
from asr.heads.ctc import CTCHead
from asr.types import Hypothesis

__all__ = ["CtcPrefixBeamSearch"]


NEG_INF = -math.inf


@dataclass
class _Prefix:
    """Accumulators of one prefix on the current frame (mutable while the frame is built)."""

    blank: float = NEG_INF
    label: float = NEG_INF
    best_blank: float = NEG_INF  # the most probable alignment ending in blank
    best_label: float = NEG_INF  # the most probable alignment ending in the last token
    frames_blank: TokenChain = EMPTY_CHAIN  # the prefix with the frames of those alignments
    frames_label: TokenChain = EMPTY_CHAIN
    lm_state: Hashable = None
    lm_score: float = 0.0
    lm_next: Tensor | None = field(default=None, repr=False)
    context: int = 0  # hotword graph state
    context_score: float = 0.0  # sum of the graph's bonuses along the prefix

    @property
    def ctc(self) -> float:
        return log_add(self.blank, self.label)

    def best(self) -> tuple[float, TokenChain]:
        """Log-probability and token frames of the prefix's most probable alignment."""
        if self.best_label > self.best_blank:
            return self.best_label, self.frames_label
        return self.best_blank, self.frames_blank


class CtcPrefixBeamSearch(StreamingBeamSearch):
    """CTC prefix beam search (a :class:`~asr.decoding.base.Searcher`).

    Args:
        head: the model's CTC head.
        cfg: uses ``beam_size``, ``nbest``, ``blank_penalty``, ``lm_weight``,
            ``insertion_bonus`` and ``length_norm``.
        lm: optional token LM fused with weight ``cfg.lm_weight``.
        context: optional hotword graph (module docstring).
    """

    def __init__(
        self,
        head: CTCHead,
        cfg: SearchConfig,
        lm: LanguageModel | None = None,
        context: ContextGraph | None = None,
    ) -> None:
        self.head = head
        self.cfg = cfg
        self.lm = fusion_lm(lm, cfg.lm_weight, head.vocab_size, "CTC head")
        self.context = context

    @torch.no_grad()
    def __call__(self, enc: Tensor, enc_lens: Tensor) -> list[list[Hypothesis]]:
        """enc (B, T, D), enc_lens (B,) -> per utterance the n-best, best first: the
        streaming search in one step over all frames."""
        state = self.step(enc, enc_lens, self.init_state(enc.shape[0], enc.device))
        return [self._nbest(beam) for beam in state.beams]

    def search(self, log_probs: Tensor) -> list[Hypothesis]:
        """One utterance: (T, V) log-probabilities -> n-best."""
        return self._nbest(self._advance(self._new_beam(self.context), log_probs))

    def _new_beams(
        self, graphs: list[ContextGraph | None], device: torch.device | str
    ) -> tuple[StreamBeam, ...]:
        return tuple(self._new_beam(graph) for graph in graphs)

    def _step(
        self, enc: Tensor, lens: list[int], beams: tuple[StreamBeam, ...]
    ) -> tuple[StreamBeam, ...]:
        log_probs = ctc_log_probs(self.head, enc, self.cfg.blank_penalty).cpu()
        return tuple(
            self._advance(beam, log_probs[b, :n]) for b, (beam, n) in enumerate(zip(beams, lens))
        )

    def partial(self, state: BeamState) -> list[Hypothesis]:
        """Per stream the hypothesis :meth:`finalize` would give if it ended now."""
        return self.finalize(state)

    def finalize(self, state: BeamState) -> list[Hypothesis]:
        """Per stream its best prefix (LM end of sentence and hotword ``finalize`` added,
        length-normalised)."""
        return [self._nbest(beam)[0] for beam in state.beams]

    def _final_nbest(self, beam: StreamBeam) -> list[Hypothesis]:
        return self._nbest(beam)

    def _new_beam(self, context: ContextGraph | None) -> StreamBeam:
        """The beam of a new stream: the empty prefix."""
        return StreamBeam(((EMPTY_CHAIN, self._root()),), 0, context)

    def _root(self) -> _Prefix:
        root = _Prefix(blank=0.0, best_blank=0.0)
        if self.lm is not None:
            root.lm_state = self.lm.init_state()
        return root

    def _advance(self, beam: StreamBeam, log_probs: Tensor) -> StreamBeam:
        """``beam`` after the frames ``log_probs (n, V)``."""
        if not log_probs.shape[0]:
            return beam
        prefixes = dict(beam.hyps)
        top_k = min(self.cfg.beam_size, log_probs.shape[-1])
        top_values, top_labels = log_probs.topk(top_k, dim=-1)
        rows = zip(top_values.tolist(), top_labels.tolist())
        for offset, (values, labels) in enumerate(rows):
            prefixes = self._frame(
                prefixes, beam.frames_done + offset, list(zip(labels, values)),
                log_probs[offset], beam.context,
            )
        return StreamBeam(
            tuple(prefixes.items()), beam.frames_done + log_probs.shape[0], beam.context
        )

    def _nbest(self, beam: StreamBeam) -> list[Hypothesis]:
        """The prefixes of ``beam`` ranked as at the end, best first."""
        context = beam.context
        norm = self.cfg.length_norm
        final = [
            (self._total(prefix, entry, context, final=True),
             rank_score(self._total(prefix, entry, context), len(prefix), norm), prefix, entry)
            for prefix, entry in beam.hyps
        ]
        # best first; prefixes that cannot end (-inf) after the others, by their score so far as
        # the final ranking takes it (length-normalised), as the transducer and TDT beams rank
        final.sort(key=lambda item: item[:2], reverse=True)
        return [
            Hypothesis(tokens=prefix.tokens(), score=score, frames=entry.best()[1].frames())
            for score, _, prefix, entry in final[: self.cfg.nbest]
        ]

    def _frame(
        self,
        beam: dict[TokenChain, _Prefix],
        frame: int,
        labels: list[tuple[int, float]],
        log_probs: Tensor,
        context: ContextGraph | None,
    ) -> dict[TokenChain, _Prefix]:
        """Extends every prefix by the frame's candidate ``(label, log-prob)`` pairs (its
        ``beam_size`` most likely labels); keeps the ``beam_size`` best prefixes.

        When the LM forbids every candidate (none is blank, and every new prefix is outside a
        word LM's lexicon), the frame is extended by all its labels ``log_probs (V,)`` that can
        keep a prefix (:meth:`_labels_kept`): blank among them keeps every prefix's LM score,
        so each prefix's score takes the frame's probability as every other frame's (only a
        frame whose blank log-probability is -inf or NaN leaves none, and then the beam is
        kept as it was: no score is right)."""
        ranked = self._ranked(self._extend(beam, frame, labels, context), context)
        if not ranked:
            retry = self._labels_kept(beam, log_probs)
            ranked = self._ranked(self._extend(beam, frame, retry, context), context)
        if not ranked:
            return beam
        return dict(item for _, item in ranked[: self.cfg.beam_size])

    def _labels_kept(
        self, beam: dict[TokenChain, _Prefix], log_probs: Tensor
    ) -> list[tuple[int, float]]:
        """The ``(label, log-prob)`` pairs of ``log_probs (V,)``, in label order, that can give
        a prefix the LM allows: blank, each prefix's last token (a repeat) and the labels the
        LM allows after some prefix. Any other label only makes prefixes the LM forbids, which
        the ranking drops, so the frame keeps the prefixes that extending by every label keeps,
        in the same order, without building and scoring ``V`` per prefix (a word LM forbids
        most labels after any prefix)."""
        values = log_probs.tolist()
        if self.lm is None:
            return list(enumerate(values))
        kept = torch.zeros(len(values), dtype=torch.bool)
        kept[self.head.blank_id] = True
        for prefix, entry in beam.items():
            kept |= self._lm_next(entry).cpu() > NEG_INF
            if prefix.length:
                kept[prefix.token] = True
        return [(label, values[label]) for label in kept.nonzero().flatten().tolist()]

    def _ranked(
        self, new: dict[TokenChain, _Prefix], context: ContextGraph | None
    ) -> list[tuple[float, tuple[TokenChain, _Prefix]]]:
        """The prefixes of ``new`` with their ranking scores, best first; a prefix the LM
        forbids (-inf: a word outside a word LM's lexicon) is dropped."""
        scored = [(self._total(*item, context), item) for item in new.items()]
        return sorted((p for p in scored if p[0] > NEG_INF), key=lambda p: p[0], reverse=True)

    def _extend(
        self,
        beam: dict[TokenChain, _Prefix],
        frame: int,
        labels: list[tuple[int, float]],
        context: ContextGraph | None,
    ) -> dict[TokenChain, _Prefix]:
        """The prefixes after ``frame``: every prefix of ``beam`` extended by every one of the
        ``(label, log-prob)`` pairs ``labels`` (the recursion of the module docstring)."""
        blank_id = self.head.blank_id
        new: dict[TokenChain, _Prefix] = {}
        for label, log_prob in labels:
            for prefix, entry in beam.items():
                best, frames = entry.best()
                if label == blank_id:
                    self._add(
                        new, prefix, entry, "blank", entry.ctc + log_prob, best + log_prob, frames
                    )
                    continue
                if prefix.length and label == prefix.token:
                    self._add(
                        new, prefix, entry, "label", entry.label + log_prob,
                        entry.best_label + log_prob, entry.frames_label,
                    )
                    score, best, frames = entry.blank, entry.best_blank, entry.frames_blank
                else:
                    score = entry.ctc
                self._add(
                    new, prefix.push(label, frame), entry, "label", score + log_prob,
                    best + log_prob, frames.push(label, frame), label, context,
                )
        return new

    def _add(
        self,
        new: dict[TokenChain, _Prefix],
        prefix: TokenChain,
        parent: _Prefix,
        kind: str,
        score: float,
        best: float,
        frames: TokenChain,
        label: int | None = None,
        context: ContextGraph | None = None,
    ) -> None:
        """Adds one contribution to ``new[prefix]`` (created from ``parent``): ``score``, the
        log-probability of its alignments, ending in ``kind`` (``blank`` or ``label``), and
        ``best`` and ``frames``, those of the most probable of them."""
        if score == NEG_INF:
            return
        entry = new.get(prefix)
        if entry is None:
            entry = new[prefix] = _Prefix(lm_state=parent.lm_state, lm_score=parent.lm_score)
            entry.lm_next = parent.lm_next
            entry.context, entry.context_score = parent.context, parent.context_score
            if label is not None and context is not None:
                bonus, entry.context = context.step(parent.context, label)
                entry.context_score += bonus
            if label is not None and self.lm is not None:
                entry.lm_score += float(self._lm_next(parent)[label])
                entry.lm_state = self.lm.advance(parent.lm_state, label)
                entry.lm_next = None
        if kind == "blank":
            entry.blank = log_add(entry.blank, score)
            if best > entry.best_blank:
                entry.best_blank, entry.frames_blank = best, frames
        else:
            entry.label = log_add(entry.label, score)
            if best > entry.best_label:
                entry.best_label, entry.frames_label = best, frames

    def _lm_next(self, entry: _Prefix) -> Tensor:
        if entry.lm_next is None:
            assert self.lm is not None
            entry.lm_next = self.lm.score(entry.lm_state)
        return entry.lm_next

    def _total(
        self,
        prefix: TokenChain,
        entry: _Prefix,
        context: ContextGraph | None,
        final: bool = False,
    ) -> float:
        """Ranking score: CTC log-probability + lm_weight * LM log-probability +
        insertion_bonus per token + hotword bonuses; ``final``: with the LM's end of sentence,
        length-normalised."""
        score = entry.ctc
        if self.lm is not None:
            lm_score = entry.lm_score
            if final:
                lm_score += self.lm.final_score(entry.lm_state)
            score += self.cfg.lm_weight * lm_score
        if self.cfg.insertion_bonus:
            score += self.cfg.insertion_bonus * len(prefix)
        if context is not None:
            score += entry.context_score
            if final:
                score += context.finalize(entry.context)
        return rank_score(score, len(prefix), self.cfg.length_norm) if final else score
