"""n-best rescoring: a first pass (CTC prefix beam or transducer beam search) proposes, a second
head scores whole hypotheses, and the two scores are mixed.

* ``attention_rescoring``, WeNet's two-pass decoding (Wu et al. 2021, "U2: Unified Streaming and
  Non-streaming Two-pass End-to-end Model for Speech Recognition", arXiv:2012.05481): the
  attention decoder scores each hypothesis with teacher forcing
  (:meth:`asr.heads.aed.AEDHead.score_sequences`, which mixes in the right-to-left decoder when
  the head has one).
* ``cif_rescoring``, the same with the CIF head's non-autoregressive decoder
  (:meth:`asr.heads.cif.CIFHead.score_sequences`): each hypothesis is decoded from embeddings
  made for its own tokens (its CTC Viterbi segments with ``segments: ctc``, as Paraformer-v2
  (arXiv:2409.17746) derives them; weights rescaled to its count otherwise). Unlike
  ``cif_beam``, whose number of positions is the head's, the first pass chooses the count, so an
  LM fused there can add the tokens that the head's count misses.

Both re-rank by ``(1 - ctc_weight) * second + ctc_weight * first_pass`` (the joint CTC/attention
weighting of Watanabe et al. 2017 applied to whole hypotheses; the first-pass score includes its
LM, bonus and normalisation). WeNet's ``attention_rescoring`` adds ``ctc_weight * ctc`` to the
whole attention score instead, which ranks as ``ctc_weight = w / (1 + w)`` does here (its 0.3 and
0.5: 0.23 and 0.33), and reports that sum; the reported score here is the weighted mean. A
hypothesis impossible on either side (``-inf``: say one that ends
inside a word under a word LM) stays impossible whatever the weight, and ties keep the first
pass's order. Timestamps are those of the first pass. An utterance with no frames keeps the first
pass's n-best (the empty hypothesis, score 0): the second head has no frame to score it on (its
decoder would attend to the padding). A hypothesis longer than the AED can place (learned
positions: more than ``heads.aed.max_len - 1`` tokens,
:attr:`asr.heads.aed.AEDHead.max_target_tokens`) gets the AED score ``-inf`` (the AED can neither
produce nor score it), so it ranks after every hypothesis the AED scores, in the first pass's
order, reported with score ``-inf``. When no hypothesis of an utterance is possible on both
sides (every mixed score ``-inf``: say all longer than the AED's positions, or the ones the AED
scores all impossible in the first pass), the mixed scores rank nothing: the utterance keeps the
first pass's n-best and scores (a warning is logged once per searcher).

Shape legend: B batch, N hypotheses of the whole batch, T frames, D encoder dims.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import torch
from torch import Tensor

from asr.decoding.base import Searcher, check_encoder_output
from asr.decoding.config import SearchConfig
from asr.encoders.base import zero_padding
from asr.types import Hypothesis

NEG_INF = float("-inf")

logger = logging.getLogger(__name__)

__all__ = ["NbestRescoring", "SequenceScorer", "combined_score"]


class SequenceScorer(Protocol):
    """A head that scores complete hypotheses (the AED and CIF heads)."""

    def score_sequences(
        self, enc: Tensor, enc_lens: Tensor, hyps: Sequence[Sequence[int]]
    ) -> Tensor:
        """enc (N, T, D), enc_lens (N,), N hypotheses -> (N,) log-probabilities."""
        ...


def combined_score(first: float, second: float, ctc_weight: float) -> float:
    """``(1 - ctc_weight) * second + ctc_weight * first``; ``-inf`` when either is ``-inf``
    (at a weight of 0 or 1 the product would be ``0 * -inf``, NaN, which sorts anywhere)."""
    if first == NEG_INF or second == NEG_INF:
        return NEG_INF
    return (1.0 - ctc_weight) * second + ctc_weight * first


class NbestRescoring:
    """Re-ranks the n-best of ``first_pass`` with the scores of a second head.

    Args:
        first_pass: a searcher returning up to ``beam_size`` hypotheses per utterance.
        head: the second head (:class:`SequenceScorer`).
        cfg: uses ``ctc_weight`` (the first pass's weight) and ``nbest``.
    """

    def __init__(self, first_pass: Searcher, head: SequenceScorer, cfg: SearchConfig) -> None:
        self.first_pass = first_pass
        self.head = head
        self.cfg = cfg
        self._warned = False

    @torch.no_grad()
    def __call__(self, enc: Tensor, enc_lens: Tensor) -> list[list[Hypothesis]]:
        """enc (B, T, D), enc_lens (B,) -> per utterance the re-ranked n-best, best first."""
        check_encoder_output(enc, enc_lens)
        nbests = self.first_pass(enc, enc_lens)
        scored = [b for b, n in enumerate(enc_lens.tolist()) if n > 0]
        owners = [b for b in scored for _ in nbests[b]]
        flat = [hyp for b in scored for hyp in nbests[b]]
        if not flat:
            return [hyps[: self.cfg.nbest] for hyps in nbests]
        index = torch.tensor(owners, device=enc.device)
        enc_lens = enc_lens.to(enc.device)
        enc = zero_padding(enc, enc_lens)  # the head's masked attention: 0 * nan
        second = self.head.score_sequences(
            enc[index], enc_lens[index], [hyp.tokens for hyp in flat]
        ).tolist()
        rescored = [
            replace(hyp, score=combined_score(hyp.score, s, self.cfg.ctc_weight))
            for hyp, s in zip(flat, second)
        ]
        results: list[list[Hypothesis]] = [
            [] if n > 0 else hyps for hyps, n in zip(nbests, enc_lens.tolist())
        ]
        unscored = set(scored)  # utterances with no finite mixed score
        for owner, hyp in zip(owners, rescored):
            results[owner].append(hyp)
            if hyp.score != NEG_INF:
                unscored.discard(owner)
        if unscored:
            self._warn_unscored(len(unscored))
        return [
            nbests[b][: self.cfg.nbest] if b in unscored  # nothing else to rank by
            else sorted(hyps, key=lambda hyp: hyp.score, reverse=True)[: self.cfg.nbest]
            for b, hyps in enumerate(results)
        ]

    def _warn_unscored(self, count: int) -> None:
        """Logs, once per searcher, that no hypothesis of ``count`` utterances is possible on
        both passes, so they keep their first-pass n-best."""
        if self._warned:
            return
        self._warned = True
        logger.warning(
            "n-best rescoring: no first-pass hypothesis of %d utterance(s) has a finite score "
            "from both passes (e.g. all longer than the AED's learned positions, "
            "heads.aed.max_len, or those within them all -inf in the first pass); they keep "
            "the first pass's n-best and scores (logged once)",
            count,
        )
