"""CIF greedy search: integrate-and-fire, then the argmax of the non-autoregressive decoder.

Dong & Xu 2020, "CIF: Continuous Integrate-and-Fire for End-to-End Speech Recognition"
(ICASSP); Gao et al. 2022, "Paraformer" (arXiv:2206.08317). The number of tokens is the number
of fires (``round(sum(alpha))``); each fired embedding is decoded in parallel, so the search is
one pass of :meth:`asr.heads.cif.CIFHead.infer` and an argmax. Blank (id 0), which the head
never targets, is dropped if predicted. ``Hypothesis.frames`` holds the encoder frame at which
each kept token fired (:func:`asr.heads.cif.cif_fire_frames`): the end of its integration.

Shape legend: B batch, T frames, D encoder dims, N fired tokens, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from asr.decoding.base import check_encoder_output
from asr.decoding.config import SearchConfig
from asr.heads.cif import CIFHead
from asr.types import Hypothesis

__all__ = ["CifGreedySearch"]


class CifGreedySearch:
    """Greedy CIF decoding (a :class:`~asr.decoding.base.Searcher`).

    Args:
        head: the CIF head.
        cfg: unused (greedy); kept for a uniform constructor.
        blank_id: id dropped from the output.
    """

    def __init__(self, head: CIFHead, cfg: SearchConfig, blank_id: int = 0) -> None:
        self.head = head
        self.cfg = cfg
        self.blank_id = blank_id

    @torch.no_grad()
    def __call__(self, enc: Tensor, enc_lens: Tensor) -> list[list[Hypothesis]]:
        """enc (B, T, D), enc_lens (B,) -> one hypothesis per utterance."""
        check_encoder_output(enc, enc_lens)
        out = self.head.infer(enc, enc_lens.to(enc.device))  # logits (B, N, V)
        best_lp, best = torch.log_softmax(out.logits.float(), dim=-1).max(dim=-1)
        valid = torch.arange(best.shape[1], device=best.device)[None, :] < out.token_lens[:, None]
        scores = (best_lp * valid).sum(dim=1).tolist()
        results = []
        for tokens, frames, count, score in zip(
            best.tolist(), out.fire_frames.tolist(), out.token_lens.tolist(), scores
        ):
            kept = [(t, f) for t, f in zip(tokens[:count], frames[:count]) if t != self.blank_id]
            hyp = Hypothesis(
                tokens=tuple(t for t, _ in kept),
                score=float(score),
                frames=tuple(f for _, f in kept),
            )
            results.append([hyp])
        return results
