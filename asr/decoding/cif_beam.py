"""CIF beam search: the fired positions' n-best with CTC prefix scores, shallow fusion of a token
LM and n-best rescoring by the non-autoregressive decoder.

Dong & Xu 2020 (CIF); Gao et al. 2022 (Paraformer, arXiv:2206.08317), whose toolkit (FunASR)
searches the non-autoregressive decoder's positions with a CTC prefix scorer and an n-gram LM;
joint CTC scores as in Watanabe et al. 2017 (:mod:`asr.decoding.ctc_prefix_score`). The CIF head
gives N token positions (fires, or CTC segments) and its decoder gives every position an
independent distribution ``x_n`` over the vocabulary, so a path (one label per position) scores
``sum_n x_n[label_n]``; blank (id 0), which the head never targets, is "no token" at its
position, as in greedy search, and with an end slot the end label closes the hypothesis (the
later positions add neither tokens nor scores: any labels there give the same sequence). The
search runs left to right over the positions:

* every live hypothesis is extended by the ``C`` labels of the position with the best
  ``x_n[label] + lm_weight * log P_lm(label | history)`` (the acoustic alone without an LM; blank
  and the end label take no LM term), ``C = beam_size``, or ``ceil(ctc_pre_beam * beam_size)``
  with CTC scores, so that an LM that forbids labels (a word LM's lexicon) steers the expansion;
* paths that produce the same token sequence merge (log-add of their acoustic scores, the
  probability of the sequence under the head);
* hypotheses are ranked by ``(1 - ctc_weight) * acoustic + ctc_weight * ctc + lm_weight *
  log P_lm(tokens)``, ``ctc`` being the CTC prefix log-probability of the tokens (of the whole
  labelling once ended), and the ``beam_size`` best are kept; at the end the LM's
  end-of-sentence log-probability and the CTC probability of the whole labelling are used.

CTC scores need a ``ctc`` head and ``ctc_weight > 0``. Rescoring (``rescore_weight = rho > 0``):
the final beam's hypotheses are scored again by the decoder with embeddings made for their own
token count (:meth:`asr.heads.cif.CIFHead.score_tokens`: weights rescaled to it, or the CTC
Viterbi segments of the hypothesis), and the acoustic part becomes ``(1 - rho) * path + rho *
rescored``: a hypothesis that dropped or ended a token early is decoded with the embeddings of
its own length.

Without an LM, CTC and rescoring the positions are independent, so beam size 1 is greedy search
(also with rescoring, which re-ranks one hypothesis); with a beam as large as the number of
prefixes nothing is pruned and the first pass is exact (the tests enumerate every path). The
number of positions is the head's (it is not searched). A token's timestamp is its position's
frame (:class:`asr.heads.cif.CIFInference`).

Shape legend: B batch, T frames, D encoder dims, N positions, V vocabulary incl. blank, K beam,
C labels expanded per hypothesis.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from asr.decoding.base import EMPTY_CHAIN, TokenChain, check_encoder_output, log_add
from asr.decoding.config import SearchConfig
from asr.decoding.ctc_greedy import ctc_log_probs
from asr.decoding.ctc_prefix_score import CtcPrefixScorer, CtcPrefixState
from asr.decoding.lm import LanguageModel, fusion_lm
from asr.encoders.base import zero_padding
from asr.heads.cif import CIFHead
from asr.heads.ctc import CTCHead
from asr.types import Hypothesis

__all__ = ["CifBeamSearch"]


@dataclass(frozen=True)
class _Hyp:
    """One token sequence in the beam.

    ``tokens`` holds the tokens with the frame of each (a chain shared with the hypotheses it
    was extended from: no copy per expansion). ``ctc`` is the CTC prefix log-probability of
    ``tokens`` (of the whole labelling once ``ended``), ``ctc_full`` that of the whole
    labelling; ``row`` indexes the hypothesis's CTC state in the search's current
    :class:`CtcPrefixState` (-1: none).
    """

    tokens: TokenChain
    acoustic: float
    lm_score: float  # sum of the LM log-probabilities of ``tokens`` (unweighted)
    lm_state: Hashable
    ended: bool = False
    ctc: float = 0.0
    ctc_full: float = 0.0
    row: int = -1


@dataclass(frozen=True)
class _Final:
    """A hypothesis at the end of the search with the parts of its score."""

    hyp: _Hyp
    lm_total: float  # LM log-probability including the end of sentence (unweighted)


class CifBeamSearch:
    """Beam search over the CIF head's positions (a :class:`~asr.decoding.base.Searcher`).

    Args:
        head: the CIF head.
        cfg: ``beam_size``, ``nbest``, ``lm_weight``, ``ctc_weight``, ``ctc_pre_beam``,
            ``blank_penalty`` (CTC) and ``rescore_weight``.
        lm: token LM for shallow fusion (used when ``cfg.lm_weight > 0``).
        ctc_head: CTC head for prefix scores (used when ``cfg.ctc_weight > 0``).
        blank_id: id that emits no token.
    """

    def __init__(
        self,
        head: CIFHead,
        cfg: SearchConfig,
        lm: LanguageModel | None = None,
        ctc_head: CTCHead | None = None,
        blank_id: int = 0,
    ) -> None:
        self.head = head
        self.cfg = cfg
        self.blank_id = blank_id
        self.lm = fusion_lm(lm, cfg.lm_weight, head.vocab_size, "CIF head")
        self.ctc_head = ctc_head if cfg.ctc_weight > 0 else None

    @torch.no_grad()
    def __call__(self, enc: Tensor, enc_lens: Tensor) -> list[list[Hypothesis]]:
        """enc (B, T, D), enc_lens (B,) -> an n-best list per utterance, best first."""
        check_encoder_output(enc, enc_lens)
        enc_lens = enc_lens.to(enc.device)
        enc = zero_padding(enc, enc_lens)  # the head's masked layers weigh padding by 0: 0 * nan
        out = self.head.infer(enc, enc_lens, self.cfg.blank_penalty)
        log_probs = torch.log_softmax(out.logits.float(), dim=-1).cpu()  # (B, N, V)
        ctc = None
        if self.ctc_head is not None and enc.shape[1] > 0:
            ctc = ctc_log_probs(self.ctc_head, enc, self.cfg.blank_penalty).cpu()
        frames = out.fire_frames.tolist()
        results = []
        for b, count in enumerate(out.token_lens.tolist()):
            utterance_ctc = None
            if ctc is not None and int(enc_lens[b]) > 0:
                utterance_ctc = ctc[b : b + 1, : int(enc_lens[b])]
            finals = self._search(log_probs[b, :count], frames[b][:count], utterance_ctc)
            rescored = self._rescore(finals, enc[b : b + 1], enc_lens[b : b + 1])
            results.append(self._ranked(finals, rescored))
        return results

    def search(
        self, log_probs: Tensor, frames: list[int], ctc_log_probs: Tensor | None = None
    ) -> list[Hypothesis]:
        """The first pass for one utterance (no rescoring).

        Args:
            log_probs: (N, V) of its positions; frames: (N,) their frames.
            ctc_log_probs: (1, T, V) CTC log-probabilities of its frames, or None.
        """
        return self._ranked(self._search(log_probs, frames, ctc_log_probs), None)

    def _score(self, hyp: _Hyp, acoustic: float, lm_score: float) -> float:
        lam = self.cfg.ctc_weight if self.ctc_head is not None else 0.0
        weight = self.cfg.lm_weight if self.lm is not None else 0.0
        return (1.0 - lam) * acoustic + lam * hyp.ctc + weight * lm_score

    def _ranked(self, finals: list[_Final], rescored: list[float] | None) -> list[Hypothesis]:
        """Final scores, best first (hypotheses that cannot end, -inf, after the others)."""
        rho = self.cfg.rescore_weight if rescored is not None else 0.0
        scored = []
        for i, final in enumerate(finals):
            hyp = final.hyp
            acoustic = hyp.acoustic if not rho else (1 - rho) * hyp.acoustic + rho * rescored[i]
            ended = replace(hyp, ctc=hyp.ctc_full)
            key = (self._score(ended, acoustic, final.lm_total),
                   self._score(hyp, acoustic, hyp.lm_score))  # fmt: skip
            scored.append((key, hyp))
        scored.sort(key=lambda item: item[0], reverse=True)
        return [hyp.tokens.hypothesis(key[0]) for key, hyp in scored[: self.cfg.nbest]]

    def _rescore(self, finals: list[_Final], enc: Tensor, enc_lens: Tensor) -> list[float] | None:
        """The decoder's log-probability of each final hypothesis with its own token count;
        None without frames (the empty hypothesis keeps score 0: an end slot's decoder would
        score its end label attending to no frame)."""
        if not self.cfg.rescore_weight or not finals or not int(enc_lens[0]):
            return None
        sequences = [f.hyp.tokens.tokens() for f in finals]
        return self.head.score_sequences(enc, enc_lens, sequences).tolist()

    def _search(
        self, log_probs: Tensor, frames: list[int], ctc_log_probs: Tensor | None
    ) -> list[_Final]:
        cfg, lm = self.cfg, self.lm
        weight = cfg.lm_weight if lm is not None else 0.0
        end_id = self.head.end_id
        scorer = None
        if self.ctc_head is not None and ctc_log_probs is not None:
            lens = torch.tensor([ctc_log_probs.shape[1]])
            scorer = CtcPrefixScorer(ctc_log_probs, lens, self.ctc_head.blank_id, eos_id=-1)
        width = cfg.beam_size
        if scorer is not None:
            width = math.ceil(cfg.ctc_pre_beam * cfg.beam_size)
        width = min(width, log_probs.shape[-1])
        top_lp, top_ids = log_probs.topk(width, dim=-1)
        start = lm.init_state() if lm is not None else None
        ctc_state = scorer.init_state(torch.zeros(1, dtype=torch.long)) if scorer else None
        empty_full = _full(ctc_state)[0] if ctc_state is not None else 0.0
        beam = [_Hyp(EMPTY_CHAIN, 0.0, 0.0, start, ctc_full=empty_full, row=0 if scorer else -1)]
        for position in range(log_probs.shape[0]):
            live = [hyp for hyp in beam if not hyp.ended]
            expansions: list[tuple[_Hyp, list[int], list[float], Tensor | None]] = []
            for hyp in live:
                lm_next = lm.score(hyp.lm_state) if lm is not None else None
                if lm_next is not None:  # the labels best with the LM (blank, end: no LM term)
                    fused = log_probs[position] + weight * lm_next.to(log_probs.dtype)
                    for label in (self.blank_id, end_id):
                        if label is not None:
                            fused[label] = log_probs[position, label]
                    ids = fused.topk(width).indices.tolist()
                    lps = log_probs[position, ids].tolist()
                else:
                    ids, lps = top_ids[position].tolist(), top_lp[position].tolist()
                expansions.append((hyp, ids, lps, lm_next))
            psi = full = ext_r = None
            if ctc_state is not None and live:
                rows = torch.tensor([hyp.row for hyp in live])
                candidates = torch.tensor([ids for _, ids, _, _ in expansions])
                live_state = _select(ctc_state, rows)
                psi, ext_r = scorer.score(live_state, candidates)  # (L, C), (T, 2, L, C)
                full = torch.logaddexp(ext_r[-1, 0], ext_r[-1, 1])
            merged: dict[tuple[TokenChain, bool], _Hyp] = {}
            sources: dict[tuple[TokenChain, bool], tuple[int, int]] = {}
            for hyp in beam:
                if hyp.ended:  # unchanged; its CTC state is no longer needed
                    merged[(hyp.tokens, True)] = replace(hyp, row=-1)
            for index, (hyp, ids, lps, lm_next) in enumerate(expansions):
                for column, (lp, label) in enumerate(zip(lps, ids)):
                    source = (index, -1)  # the parent's CTC state
                    if label == self.blank_id:
                        new = replace(hyp, acoustic=hyp.acoustic + lp)
                    elif label == end_id:
                        new = replace(hyp, acoustic=hyp.acoustic + lp, ended=True, ctc=hyp.ctc_full)
                    else:
                        new = _Hyp(
                            hyp.tokens.push(label, frames[position]),
                            hyp.acoustic + lp,
                            hyp.lm_score + (float(lm_next[label]) if lm_next is not None else 0.0),
                            lm.advance(hyp.lm_state, label) if lm is not None else None,
                        )
                        if psi is not None:
                            new = replace(
                                new, ctc=float(psi[index, column]),
                                ctc_full=float(full[index, column]),
                            )  # fmt: skip
                            source = (index, column)
                    key = (new.tokens, new.ended)
                    old = merged.get(key)
                    if old is not None:  # same tokens, so the same LM and CTC scores: the
                        # frames of the more probable path, the two paths' probabilities summed
                        keep, keep_source = (old, sources.get(key)) if (
                            old.acoustic >= new.acoustic
                        ) else (new, source)
                        new = replace(keep, acoustic=log_add(old.acoustic, new.acoustic))
                        source = keep_source if keep_source is not None else source
                    merged[key] = new
                    if not new.ended:
                        sources[key] = source
            ranked = sorted(
                merged.values(), key=lambda h: self._score(h, h.acoustic, h.lm_score), reverse=True
            )
            # a hypothesis the LM forbids (-inf: outside a word LM's lexicon) is dropped,
            # unless every one is
            allowed = [h for h in ranked if h.lm_score > -math.inf] if lm is not None else ranked
            beam = (allowed or ranked)[: cfg.beam_size]
            if ctc_state is not None and live:
                beam, ctc_state = _advance_ctc(beam, sources, live, ctc_state, psi, ext_r)
        finals = []
        for hyp in beam:
            lm_total = hyp.lm_score + (lm.final_score(hyp.lm_state) if lm is not None else 0.0)
            finals.append(_Final(hyp, lm_total))
        return _merge_ended(finals)


def _full(state: CtcPrefixState) -> list[float]:
    """CTC log-probability of each hypothesis's whole labelling (the last frame's totals)."""
    return torch.logaddexp(state.r[-1, 0], state.r[-1, 1]).tolist()


def _select(state: CtcPrefixState, rows: Tensor) -> CtcPrefixState:
    return CtcPrefixState(
        r=state.r[:, :, rows],
        psi=state.psi[rows],
        last=state.last[rows],
        length=state.length[rows],
        owner=state.owner[rows],
    )


def _advance_ctc(
    beam: list[_Hyp],
    sources: dict[tuple[TokenChain, bool], tuple[int, int]],
    live: list[_Hyp],
    state: CtcPrefixState,
    psi: Tensor,
    ext_r: Tensor,
) -> tuple[list[_Hyp], CtcPrefixState]:
    """The CTC states of the kept live hypotheses (extended by a token, or their parent's), in
    one new state whose row ``i`` is the ``i``-th of them."""
    r_list, psi_list, last, length = [], [], [], []
    new_beam = []
    for hyp in beam:
        if hyp.ended:
            new_beam.append(hyp)
            continue
        parent, column = sources[(hyp.tokens, False)]
        parent_row = live[parent].row
        if column < 0:
            r_list.append(state.r[:, :, parent_row])
            psi_list.append(state.psi[parent_row])
            last.append(int(state.last[parent_row]))
            length.append(int(state.length[parent_row]))
        else:
            r_list.append(ext_r[:, :, parent, column])
            psi_list.append(psi[parent, column])
            last.append(hyp.tokens.token)
            length.append(len(hyp.tokens))
        new_beam.append(replace(hyp, row=len(r_list) - 1))
    if not r_list:
        return new_beam, state
    new_state = CtcPrefixState(
        r=torch.stack(r_list, dim=2),
        psi=torch.stack(psi_list),
        last=torch.tensor(last, dtype=torch.long),
        length=torch.tensor(length, dtype=torch.long),
        owner=torch.zeros(len(r_list), dtype=torch.long),
    )
    return new_beam, new_state


def _merge_ended(finals: list[_Final]) -> list[_Final]:
    """Hypotheses with the same tokens (one ended by the end label, one not) log-add."""
    merged: dict[TokenChain, _Final] = {}
    for final in finals:
        old = merged.get(final.hyp.tokens)
        if old is None:
            merged[final.hyp.tokens] = final
            continue
        keep = old if old.hyp.acoustic >= final.hyp.acoustic else final
        acoustic = log_add(old.hyp.acoustic, final.hyp.acoustic)
        merged[final.hyp.tokens] = replace(keep, hyp=replace(keep.hyp, acoustic=acoustic))
    return list(merged.values())
