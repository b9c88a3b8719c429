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

Streaming (WeNet's U2++ runtime: CTC prefix beam search chunk by chunk, attention rescoring at
each endpoint and at the end of the input): the state (:class:`RescoringState`) is the first
pass's streaming beam and the encoder frames of the segment so far, each stream's as the chunks
they came in (:class:`~asr.decoding.cif_greedy.FrameChunks`, as ``cif_greedy`` keeps them). A
partial result is the first pass's best hypothesis; :meth:`NbestRescoring.finalize` takes the
first pass's n-best of the segment and rescores it over all its frames, exactly the offline
search of those frames. The frames are not bounded here: they grow with the segment (``D``
numbers per encoder frame, 2 KiB per frame of a 512-dim float32 encoder, some 1 MiB per 20 s at
25 frames a second) and are dropped when it ends; the endpoint rules bound a segment (rule 3:
20 s by default), so only a stream without endpointing (``--no-endpoint``) keeps them for its
whole length, as WeNet's runtime keeps a segment's encoder output until its endpoint.

Shape legend: B batch, N hypotheses of the whole batch, T frames, D encoder dims.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from asr.decoding.base import Searcher, StreamingBeamSearch, check_encoder_output
from asr.decoding.cif_greedy import FrameChunks, last_frames
from asr.decoding.config import SearchConfig
from asr.encoders.base import zero_padding
from asr.state import stream_field
from asr.types import Hypothesis

NEG_INF = float("-inf")

logger = logging.getLogger(__name__)

__all__ = ["NbestRescoring", "RescoringState", "SequenceScorer", "combined_score"]


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


@dataclass(frozen=True)
class RescoringState:
    """Streaming state of :class:`NbestRescoring`.

    Attributes:
        first: the first pass's state (a :class:`~asr.decoding.base.BeamState`).
        frames: per stream, the encoder frames of its segment so far
            (:class:`~asr.decoding.cif_greedy.FrameChunks`; None before the first frame), each
            stream's own: stacking and splitting states moves them, never copies them.
    """

    first: Any
    frames: tuple[FrameChunks | None, ...] = stream_field()


class NbestRescoring:
    """Re-ranks the n-best of ``first_pass`` with the scores of a second head; offline, and
    streaming (``init_state`` / ``step`` / ``partial`` / ``finalize``, module docstring) when
    the first pass is a streaming beam search.

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
        return self._rescore(enc, enc_lens, self.first_pass(enc, enc_lens))

    def _rescore(
        self, enc: Tensor, enc_lens: Tensor, nbests: list[list[Hypothesis]]
    ) -> list[list[Hypothesis]]:
        """The first pass's n-best ``nbests`` of enc (B, T, D), enc_lens (B,) re-ranked by the
        second head, best first (at most ``nbest`` each)."""
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

    # ------------------------------------------------------------------------- streaming

    @torch.no_grad()
    def init_state(
        self, batch_size: int, device: torch.device | str, contexts: Any = None
    ) -> RescoringState:
        """State of ``batch_size`` new streams: the first pass's (``contexts``: per stream a
        hotword graph or None, for a first pass that biases; default its own graph) and no
        frame yet.

        Raises:
            TypeError: when the first pass does not stream.
        """
        first = self._streaming_first_pass()
        state = (first.init_state(batch_size, device) if contexts is None
                 else first.init_state(batch_size, device, contexts=contexts))
        return RescoringState(state, (None,) * batch_size)

    @torch.no_grad()
    def step(self, enc: Tensor, enc_lens: Tensor, state: RescoringState) -> RescoringState:
        """Consumes a chunk: enc (B, T, D), enc_lens (B,) valid frames of it (more may come):
        the first pass steps, and each stream keeps a copy of its valid frames (one device
        sync), its earlier frames not copied."""
        check_encoder_output(enc, enc_lens)
        if len(state.frames) != enc.shape[0]:
            raise ValueError(f"a state of {len(state.frames)} streams for a chunk of "
                             f"{enc.shape[0]}")
        first = self._streaming_first_pass().step(enc, enc_lens, state.first)
        frames = tuple(
            FrameChunks.append(chunks, enc[row, :count].clone())
            for row, (chunks, count) in enumerate(zip(state.frames, enc_lens.tolist()))
        )
        return RescoringState(first, frames)

    def partial(self, state: RescoringState) -> list[Hypothesis]:
        """Per stream the first pass's best hypothesis so far (not rescored)."""
        return self._streaming_first_pass().partial(state.first)

    @torch.no_grad()
    def finalize(self, state: RescoringState) -> list[Hypothesis]:
        """Per stream the best hypothesis of its segment: the first pass's n-best of it
        rescored over all its frames, as the offline search of those frames."""
        nbests = self._streaming_first_pass().finalize_nbest(state.first)
        lens = torch.tensor(
            [0 if chunks is None else chunks.num_frames for chunks in state.frames],
            dtype=torch.int64,
        )
        held = [chunks for chunks in state.frames if chunks is not None]
        if held:
            sample = held[0].frames
            lens = lens.to(sample.device)
            enc = last_frames(state.frames, lens, sample.shape[-1], sample.dtype)
            nbests = self._rescore(enc, lens, nbests)
        return [hyps[0] if hyps else Hypothesis(tokens=()) for hyps in nbests]

    def _streaming_first_pass(self) -> StreamingBeamSearch:
        first = self.first_pass
        if not isinstance(first, StreamingBeamSearch):
            raise TypeError(f"the first pass {type(first).__name__} does not stream")
        return first

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
