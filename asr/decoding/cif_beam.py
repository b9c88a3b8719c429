"""CIF beam search: the fired positions' n-best with optional shallow fusion of a token LM.

Dong & Xu 2020 (CIF); Gao et al. 2022 (Paraformer, arXiv:2206.08317), whose toolkit pairs the
non-autoregressive decoder with an n-gram LM in a beam search. The CIF head fires N token
positions and its decoder gives every position an independent distribution ``x_n`` over the
vocabulary, so a path (one label per position) scores ``sum_n x_n[label_n]``; blank (id 0),
which the head never targets, is "no token" at its position, as in greedy search. The search
runs left to right over the positions:

* every hypothesis is extended by the ``beam_size`` labels of the position with the best
  ``x_n[label] + lm_weight * log P_lm(label | history)`` (the acoustic alone without an LM), so
  that an LM that forbids labels (a word LM's lexicon) steers the expansion;
* paths that produce the same token sequence merge (log-add of their acoustic scores, the
  probability of the sequence under the head);
* hypotheses are ranked by ``acoustic + lm_weight * log P_lm(tokens)`` and the ``beam_size``
  best are kept; at the end the LM's end-of-sentence log-probability is added.

Without an LM the positions are independent, so beam size 1 is greedy search; with a beam as
large as the number of prefixes nothing is pruned and the result is exact (the tests enumerate
every path). The number of tokens is the head's fire count (it is not searched). A token's
timestamp is the frame at which its position fired (:func:`asr.heads.cif.cif_fire_frames`).

Shape legend: B batch, T frames, D encoder dims, N fired tokens, V vocabulary incl. blank, K
labels expanded per position.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from asr.decoding.base import check_encoder_output, log_add
from asr.decoding.config import SearchConfig
from asr.decoding.lm import LanguageModel, fusion_lm
from asr.heads.cif import CIFHead
from asr.types import Hypothesis

__all__ = ["CifBeamSearch"]


@dataclass(frozen=True)
class _Hyp:
    """One token sequence in the beam."""

    tokens: tuple[int, ...]
    frames: tuple[int, ...]
    acoustic: float
    lm_score: float  # sum of the LM log-probabilities of ``tokens`` (unweighted)
    lm_state: Hashable


class CifBeamSearch:
    """Beam search over the CIF head's fired positions (a :class:`~asr.decoding.base.Searcher`).

    Args:
        head: the CIF head.
        cfg: ``beam_size``, ``nbest``, ``lm_weight``.
        lm: token LM for shallow fusion (used when ``cfg.lm_weight > 0``).
        blank_id: id that emits no token.
    """

    def __init__(
        self,
        head: CIFHead,
        cfg: SearchConfig,
        lm: LanguageModel | None = None,
        blank_id: int = 0,
    ) -> None:
        self.head = head
        self.cfg = cfg
        self.blank_id = blank_id
        self.lm = fusion_lm(lm, cfg.lm_weight, head.vocab_size, "CIF head")

    @torch.no_grad()
    def __call__(self, enc: Tensor, enc_lens: Tensor) -> list[list[Hypothesis]]:
        """enc (B, T, D), enc_lens (B,) -> an n-best list per utterance, best first."""
        check_encoder_output(enc, enc_lens)
        out = self.head.infer(enc, enc_lens.to(enc.device))
        log_probs = torch.log_softmax(out.logits.float(), dim=-1).cpu()  # (B, N, V)
        frames = out.fire_frames.tolist()
        return [
            self.search(log_probs[b, :count], frames[b][:count])
            for b, count in enumerate(out.token_lens.tolist())
        ]

    def search(self, log_probs: Tensor, frames: list[int]) -> list[Hypothesis]:
        """One utterance: log_probs (N, V) of its fired positions, frames (N,) their fire frames."""
        cfg, lm = self.cfg, self.lm
        weight = cfg.lm_weight if lm is not None else 0.0
        width = min(cfg.beam_size, log_probs.shape[-1])
        top_lp, top_ids = log_probs.topk(width, dim=-1)
        start = lm.init_state() if lm is not None else None
        beam = [_Hyp((), (), 0.0, 0.0, start)]
        for position, (lps, ids) in enumerate(zip(top_lp.tolist(), top_ids.tolist())):
            merged: dict[tuple[int, ...], _Hyp] = {}
            for hyp in beam:
                lm_next = lm.score(hyp.lm_state) if lm is not None else None
                if lm_next is not None:  # the labels best with the LM (blank: no LM term)
                    fused = log_probs[position] + weight * lm_next.to(log_probs.dtype)
                    fused[self.blank_id] = log_probs[position, self.blank_id]
                    ids = fused.topk(width).indices.tolist()
                    lps = log_probs[position, ids].tolist()
                for lp, label in zip(lps, ids):
                    if label == self.blank_id:
                        new = _Hyp(
                            hyp.tokens, hyp.frames, hyp.acoustic + lp, hyp.lm_score, hyp.lm_state
                        )
                    else:
                        new = _Hyp(
                            hyp.tokens + (label,),
                            hyp.frames + (frames[position],),
                            hyp.acoustic + lp,
                            hyp.lm_score + (float(lm_next[label]) if lm_next is not None else 0.0),
                            lm.advance(hyp.lm_state, label) if lm is not None else None,
                        )
                    old = merged.get(new.tokens)
                    if old is not None:  # same tokens, so the same LM score and state: the
                        # frames of the more probable path, the two paths' probabilities summed
                        keep = old if old.acoustic >= new.acoustic else new
                        new = replace(keep, acoustic=log_add(old.acoustic, new.acoustic))
                    merged[new.tokens] = new
            ranked = sorted(
                merged.values(), key=lambda h: h.acoustic + weight * h.lm_score, reverse=True
            )
            # a hypothesis the LM forbids (-inf: outside a word LM's lexicon) is dropped,
            # unless every one is
            allowed = [h for h in ranked if h.lm_score > -math.inf] if lm is not None else ranked
            beam = (allowed or ranked)[: cfg.beam_size]
        finals = []
        for hyp in beam:
            lm_total = hyp.lm_score + (lm.final_score(hyp.lm_state) if lm is not None else 0.0)
            finals.append((hyp.acoustic + weight * lm_total, hyp))
        # best first; hypotheses that cannot end (-inf) after the others, by their score so far
        finals.sort(
            key=lambda item: (item[0], item[1].acoustic + weight * item[1].lm_score), reverse=True
        )
        return [
            Hypothesis(tokens=hyp.tokens, score=score, frames=hyp.frames)
            for score, hyp in finals[: cfg.nbest]
        ]
