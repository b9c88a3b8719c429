"""Attention rescoring of a first-pass n-best (CTC prefix beam or transducer beam search).

WeNet's "attention rescoring" (Wu et al. 2021, "U2: Unified Streaming and Non-streaming Two-pass
End-to-end Model for Speech Recognition", arXiv:2012.05481): the ``beam_size`` hypotheses of the
first pass are scored by the attention decoder with teacher forcing
(:meth:`asr.heads.aed.AEDHead.score_sequences`, which mixes in the right-to-left decoder when the
head has one), and re-ranked by ``(1 - ctc_weight) * attention + ctc_weight * first_pass``
(the joint CTC/attention weighting of Watanabe et al. 2017 applied to whole hypotheses).
Timestamps are those of the first pass.

Shape legend: B batch, N hypotheses of the whole batch, T frames, D encoder dims.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from asr.decoding.base import Searcher, check_encoder_output
from asr.decoding.config import SearchConfig
from asr.heads.aed import AEDHead
from asr.types import Hypothesis

__all__ = ["AttentionRescoring"]


class AttentionRescoring:
    """Re-ranks the n-best of ``first_pass`` with an AED head.

    Args:
        first_pass: a searcher returning up to ``beam_size`` hypotheses per utterance.
        head: the AED head.
        cfg: uses ``ctc_weight`` and ``nbest``.
    """

    def __init__(self, first_pass: Searcher, head: AEDHead, cfg: SearchConfig) -> None:
        self.first_pass = first_pass
        self.head = head
        self.cfg = cfg

    @torch.no_grad()
    def __call__(self, enc: Tensor, enc_lens: Tensor) -> list[list[Hypothesis]]:
        """enc (B, T, D), enc_lens (B,) -> per utterance the re-ranked n-best, best first."""
        check_encoder_output(enc, enc_lens)
        nbests = self.first_pass(enc, enc_lens)
        owners = [b for b, hyps in enumerate(nbests) for _ in hyps]
        flat = [hyp for hyps in nbests for hyp in hyps]
        if not flat:
            return [[] for _ in nbests]
        index = torch.tensor(owners, device=enc.device)
        att = self.head.score_sequences(
            enc[index], enc_lens.to(enc.device)[index], [hyp.tokens for hyp in flat]
        ).tolist()
        weight = self.cfg.ctc_weight
        rescored = [
            replace(hyp, score=(1.0 - weight) * a + weight * hyp.score) for hyp, a in zip(flat, att)
        ]
        results: list[list[Hypothesis]] = [[] for _ in nbests]
        for owner, hyp in zip(owners, rescored):
            results[owner].append(hyp)
        return [
            sorted(hyps, key=lambda hyp: hyp.score, reverse=True)[: self.cfg.nbest]
            for hyps in results
        ]
