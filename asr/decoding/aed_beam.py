"""Attention (AED) beam search with length normalisation and joint CTC/attention scoring.

Batched beam search over an autoregressive decoder (Sutskever et al. 2014; the step order follows
whisper's ``BeamSearchDecoder``), with the GNMT length normalisation of Wu et al. 2016,
"Google's Neural Machine Translation System" (arXiv:1609.08144): finished hypotheses are ranked
by ``score / ((5 + L) / 6) ** length_penalty``. Joint CTC/attention decoding: Watanabe et al.
2017, "Hybrid CTC/Attention Architecture for End-to-End Speech Recognition": with a CTC head and
``ctc_weight = lambda > 0`` a hypothesis scores ``(1 - lambda) * log P_att(h) + lambda *
log P_ctc_prefix(h)`` (:mod:`asr.decoding.ctc_prefix_score`), computed for the
``ctc_pre_beam * beam_size`` best attention candidates of each hypothesis.

Each step ranks the ``K * C`` continuations of an utterance's K live hypotheses; walking them
best first, ``<eos>`` continuations join the finished list and the others the new beam until it
holds K. An utterance stops when K hypotheses have finished; at ``enc_len`` tokens, or at the
head's :attr:`~asr.heads.aed.AEDHead.max_target_tokens` (learned positions: ``max_len - 1``)
if fewer, only ``<eos>`` is allowed: every live hypothesis ends there with the log-probability
of ``<eos>`` added, so that it scores as :meth:`~asr.heads.aed.AEDHead.score_sequences` scores
it (ESPnet's ``BeamSearch`` also ends its live hypotheses at ``maxlen``, appending ``<eos>``
without scoring it; WeNet's attention search keeps its best live hypothesis at ``maxlen``). An
utterance with no frames is not searched (the decoder would attend to its padding,
:meth:`~asr.heads.decoder_layers.MultiHeadAttention.attend`): it is the empty hypothesis with score
0, as in a batch with no frames at all. If no hypothesis can end (every candidate impossible under
the CTC prefix score before ``<eos>`` is among them), the result is the empty hypothesis with score
``-inf``, as in the TDT searches, not a confident empty transcript. With ``beam_size = 1`` and
``ctc_weight = 0`` this is greedy argmax decoding.

Shape legend: B batch, K beam, N = B * K rows, T frames, D encoder dims, V vocabulary, C
candidates per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from asr.decoding.base import EMPTY_CHAIN, TokenChain, check_encoder_output
from asr.decoding.config import SearchConfig
from asr.decoding.ctc_greedy import ctc_log_probs
from asr.decoding.ctc_prefix_score import CtcPrefixScorer, CtcPrefixState
from asr.encoders.base import zero_padding
from asr.heads.aed import AEDCache, AEDHead
from asr.heads.ctc import CTCHead
from asr.heads.decoder_layers import lengths_to_mask
from asr.types import Hypothesis

__all__ = ["AedBeamSearch", "length_normalised"]

NEG_INF = float("-inf")
#: The frame a hypothesis' :class:`~asr.decoding.base.TokenChain` gives each AED token: none (an
#: AED token is not tied to a frame; results have no ``frames``).
NO_FRAME = -1


def length_normalised(score: float, num_tokens: int, alpha: float) -> float:
    """GNMT normalisation ``score / ((5 + L) / 6) ** alpha`` with L = tokens + 1 (eos)."""
    return score / ((5.0 + num_tokens + 1) / 6.0) ** alpha


@dataclass
class _Beam:
    """Live rows (N = B * K, row b * K + k belongs to utterance b); mutable search bookkeeping.

    ``tokens`` holds each row's prefix as a :class:`~asr.decoding.base.TokenChain`, which the
    rows extending it share, so appending a token costs O(1) however long the prefix is (the
    decoder reads only ``last`` and its cache, never the prefix); tuples are built only for
    the results.
    """

    tokens: list[TokenChain]
    att: Tensor  # (N,) accumulated attention log-probability
    score: Tensor  # (N,) joint score, -inf for empty slots
    last: Tensor  # (N,) last token fed to the decoder
    cache: AEDCache
    ctc: CtcPrefixState | None


class AedBeamSearch:
    """Beam search over an :class:`~asr.heads.aed.AEDHead` (optionally with CTC prefix scores).

    Args:
        head: the AED head.
        cfg: uses ``beam_size``, ``nbest``, ``length_penalty``, ``ctc_weight``,
            ``ctc_pre_beam`` and ``blank_penalty`` (for the CTC log-probabilities).
        ctc_head: CTC head for joint decoding, or None.
    """

    def __init__(self, head: AEDHead, cfg: SearchConfig, ctc_head: CTCHead | None = None) -> None:
        self.head = head
        self.cfg = cfg
        self.ctc_head = ctc_head if cfg.ctc_weight > 0 else None

    @torch.no_grad()
    def __call__(self, enc: Tensor, enc_lens: Tensor) -> list[list[Hypothesis]]:
        """enc (B, T, D), enc_lens (B,) -> per utterance the n-best, best first."""
        check_encoder_output(enc, enc_lens)
        batch, beam = enc.shape[0], self.cfg.beam_size
        if enc.shape[1] == 0 or batch == 0:
            return [[Hypothesis(tokens=())] for _ in range(batch)]
        enc_lens = enc_lens.to(enc.device)
        enc = zero_padding(enc, enc_lens)  # masked attention weighs padding by 0: 0 * nan
        rows_enc = enc.repeat_interleave(beam, dim=0)
        memory = self.head.precompute_memory(enc)
        memory = type(memory)(
            *(x.repeat_interleave(beam, dim=1) for x in (memory.keys, memory.values))
        )
        rows_mask = lengths_to_mask(enc_lens, enc.shape[1]).repeat_interleave(beam, dim=0)
        scorer = None
        if self.ctc_head is not None:
            log_probs = ctc_log_probs(self.ctc_head, enc, self.cfg.blank_penalty)
            scorer = CtcPrefixScorer(
                log_probs, enc_lens, self.ctc_head.blank_id, self.head.cfg.eos_id
            )
        state = self._init(batch, enc.device, enc.dtype, scorer)
        finished: list[list[tuple[float, TokenChain, float]]] = [[] for _ in range(batch)]
        frames = enc_lens.tolist()
        done = [n == 0 for n in frames]  # no frames: finished with nothing, the empty hypothesis
        limit = self.head.max_target_tokens
        max_lens = frames if limit is None else [min(n, limit) for n in frames]
        for step in range(max(max_lens) + 1):
            log_probs, cache = self.head.step(state.last, state.cache, rows_enc, rows_mask, memory)
            state.cache = cache
            log_probs = self._mask(log_probs, step, max_lens, done)
            candidates, att, joint, psi, r = self._candidates(state, log_probs, scorer)
            state = self._select(state, candidates, att, joint, psi, r, scorer, finished, done)
            if all(done):
                break
        return [self._nbest(items, n > 0) for items, n in zip(finished, frames)]

    def _init(self, batch: int, device, dtype, scorer: CtcPrefixScorer | None) -> _Beam:
        beam = self.cfg.beam_size
        rows = batch * beam
        score = torch.full((rows,), NEG_INF, device=device)
        score[::beam] = 0.0  # one live hypothesis per utterance at the start
        owner = torch.arange(batch, device=device).repeat_interleave(beam)
        return _Beam(
            tokens=[EMPTY_CHAIN] * rows,
            att=torch.zeros(rows, device=device),
            score=score,
            last=torch.full((rows,), self.head.cfg.sos_id, dtype=torch.long, device=device),
            cache=self.head.init_cache(rows, device, dtype),
            ctc=scorer.init_state(owner) if scorer is not None else None,
        )

    def _mask(self, log_probs: Tensor, step: int, max_lens: list[int], done: list[bool]) -> Tensor:
        """No blank (nor a distinct sos); only eos at the length limit."""
        cfg = self.head.cfg
        log_probs = log_probs.clone()
        log_probs[:, 0] = NEG_INF  # blank is never an AED target
        if cfg.sos_id != cfg.eos_id:
            log_probs[:, cfg.sos_id] = NEG_INF
        beam = self.cfg.beam_size
        for b, limit in enumerate(max_lens):
            if step >= limit and not done[b]:
                rows = slice(b * beam, (b + 1) * beam)
                eos = log_probs[rows, cfg.eos_id].clone()
                log_probs[rows] = NEG_INF
                log_probs[rows, cfg.eos_id] = eos
        return log_probs

    def _candidates(
        self, state: _Beam, log_probs: Tensor, scorer: CtcPrefixScorer | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """Candidate tokens (N, C) with attention (N, C) and joint (N, C) scores."""
        att = state.att[:, None] + log_probs
        if scorer is None or state.ctc is None:
            candidates = torch.arange(log_probs.shape[1], device=log_probs.device)
            candidates = candidates.expand_as(log_probs)
            return candidates, att, state.score[:, None] + log_probs, None, None
        width = min(log_probs.shape[1], math.ceil(self.cfg.ctc_pre_beam * self.cfg.beam_size))
        _, candidates = log_probs.topk(width, dim=1)
        att = att.gather(1, candidates)
        psi, r = scorer.score(state.ctc, candidates)
        weight = self.cfg.ctc_weight
        joint = (1.0 - weight) * att + weight * psi
        # masked tokens (att = -inf) stay impossible even at weight 1 (0 * -inf is nan)
        allowed = torch.isfinite(state.score)[:, None] & (att > NEG_INF)
        joint = torch.where(allowed, joint, NEG_INF)
        return candidates, att, joint, psi, r

    def _select(
        self,
        state: _Beam,
        candidates: Tensor,
        att: Tensor,
        joint: Tensor,
        psi: Tensor | None,
        r: Tensor | None,
        scorer: CtcPrefixScorer | None,
        finished: list[list[tuple[float, TokenChain, float]]],
        done: list[bool],
    ) -> _Beam:
        """Walks each utterance's continuations best first (see the module docstring) and
        builds the next beam; empty slots repeat a live row with score -inf."""
        beam, eos = self.cfg.beam_size, self.head.cfg.eos_id
        batch, width = len(finished), candidates.shape[1]
        values, index = joint.view(batch, beam * width).topk(min(2 * beam, beam * width), dim=1)
        tokens = candidates.reshape(batch, beam * width).gather(1, index)
        parents, columns, alive = [], [], []
        for b, (vals, idx, toks) in enumerate(
            zip(values.tolist(), index.tolist(), tokens.tolist())
        ):
            live: list[tuple[int, int]] = []
            for value, flat, token in zip(vals, idx, toks):
                if done[b] or value == NEG_INF or len(live) == beam:
                    break
                row, column = b * beam + flat // width, flat % width
                if token == eos:
                    prefix = state.tokens[row]
                    norm = length_normalised(value, len(prefix), self.cfg.length_penalty)
                    finished[b].append((norm, prefix, value))
                else:
                    live.append((row, column))
            if len(finished[b]) >= beam or not live:
                done[b] = True
            slots = live if not done[b] else []
            padded = slots + [slots[0] if slots else (b * beam, 0)] * (beam - len(slots))
            parents += [row for row, _ in padded]
            columns += [column for _, column in padded]
            alive += [True] * len(slots) + [False] * (beam - len(slots))
        device = joint.device
        parent = torch.tensor(parents, device=device)
        column = torch.tensor(columns, device=device)
        token = candidates[parent, column]
        score = torch.where(torch.tensor(alive, device=device), joint[parent, column], NEG_INF)
        ctc = None
        if scorer is not None and state.ctc is not None and psi is not None and r is not None:
            ctc = scorer.advance(state.ctc, psi, r, parent, column, token)
        return _Beam(
            tokens=[state.tokens[p].push(t, NO_FRAME) for p, t in zip(parents, token.tolist())],
            att=att[parent, column],
            score=score,
            last=token,
            cache=state.cache.select(parent),
            ctc=ctc,
        )

    def _nbest(self, items: list[tuple[float, TokenChain, float]],
               searched: bool) -> list[Hypothesis]:
        """Finished (normalised score, tokens, raw score) -> n-best by normalised score; with
        none, the empty hypothesis: score 0 for an utterance without frames, ``-inf`` for a
        search in which no hypothesis could end."""
        if not items:
            return [Hypothesis(tokens=(), score=NEG_INF if searched else 0.0)]
        ranked = sorted(items, key=lambda item: item[0], reverse=True)[: self.cfg.nbest]
        return [Hypothesis(tokens=tokens.tokens(), score=norm) for norm, tokens, _ in ranked]
