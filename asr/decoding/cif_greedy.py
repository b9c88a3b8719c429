"""CIF greedy search: integrate-and-fire, then the argmax of the non-autoregressive decoder.

Dong & Xu 2020, "CIF: Continuous Integrate-and-Fire for End-to-End Speech Recognition"
(ICASSP); Gao et al. 2022, "Paraformer" (arXiv:2206.08317). The number of tokens is the number
of fires (``round(sum(alpha))``); each fired embedding is decoded in parallel, so the search is
one forward pass of :meth:`asr.heads.cif.CIFHead.forward` and an argmax. Blank (id 0), which the
head never targets, is dropped if predicted. No timestamps (``Hypothesis.timestamps`` is empty).

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
        logits, token_lens = self.head(enc, enc_lens.to(enc.device))  # (B, N, V), (B,)
        best_lp, best = torch.log_softmax(logits.float(), dim=-1).max(dim=-1)
        valid = torch.arange(best.shape[1], device=best.device)[None, :] < token_lens[:, None]
        scores = (best_lp * valid).sum(dim=1).tolist()
        results = []
        for tokens, count, score in zip(best.tolist(), token_lens.tolist(), scores):
            kept = tuple(token for token in tokens[:count] if token != self.blank_id)
            results.append([Hypothesis(tokens=kept, score=float(score))])
        return results
