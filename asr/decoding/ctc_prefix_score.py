"""CTC prefix scores for attention beam search (joint CTC/attention decoding).

Watanabe et al. 2017, "Hybrid CTC/Attention Architecture for End-to-End Speech Recognition"
(IEEE JSTSP), Algorithm 2: the CTC prefix probability of a hypothesis ``h`` is the probability
of all alignments whose labelling STARTS with ``h``; the score of ``h <eos>`` is the
probability of the labelling ``h`` itself. Vectorised over hypotheses and candidate tokens as
in ESPnet's ``CTCPrefixScoreTH`` (Seki et al. 2019, "Vectorized Beam Search for CTC-Attention-
based Speech Recognition").

Per hypothesis the state keeps the forward variables over all frames, ``r[t, 0]`` (alignments
of ``h`` over frames ``0..t`` ending in its last token) and ``r[t, 1]`` (ending in blank). For a
candidate token c, with ``phi[t] = r[t, 1]`` if c repeats the last token of ``h`` else
``logaddexp(r[t, 0], r[t, 1])``:

    r'[t, 0] = logaddexp(r'[t-1, 0], phi[t-1]) + x[t, c]
    r'[t, 1] = logaddexp(r'[t-1, 0], r'[t-1, 1]) + x[t, blank]
    psi(h c) = logsumexp_t(phi[t-1] + x[t, c])      (phi[-1] = 0 only for the empty h)

Frames beyond an utterance's length are padded with ``x[blank] = 0`` and ``x[c] = -inf``, so
the final frame of the padded tensor carries the totals of every utterance.

Shape legend: B utterances, N hypotheses, C candidates per hypothesis, T frames, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from asr.state import state_field

__all__ = ["CtcPrefixScorer", "CtcPrefixState"]

NEG_INF = float("-inf")


@dataclass(frozen=True)
class CtcPrefixState:
    """CTC prefix state of N hypotheses.

    Attributes:
        r: (T, 2, N) forward log-variables (ending in the last token, ending in blank).
        psi: (N,) prefix log-probability of each hypothesis.
        last: (N,) int64 last token (-1 for the empty hypothesis).
        length: (N,) int64 number of tokens.
        owner: (N,) int64 utterance of each hypothesis.
    """

    r: Tensor = state_field(batch_dim=2)
    psi: Tensor = state_field(batch_dim=0)
    last: Tensor = state_field(batch_dim=0)
    length: Tensor = state_field(batch_dim=0)
    owner: Tensor = state_field(batch_dim=0)


class CtcPrefixScorer:
    """Prefix scores of candidate tokens under CTC log-probabilities.

    Args:
        log_probs: (B, T, V) CTC log-probabilities.
        lens: (B,) valid frames.
        blank_id: CTC blank.
        eos_id: the end symbol; its candidate score is the probability of the whole labelling.
    """

    def __init__(self, log_probs: Tensor, lens: Tensor, blank_id: int, eos_id: int) -> None:
        batch, frames, _ = log_probs.shape
        valid = torch.arange(frames, device=log_probs.device)[None, :] < lens[:, None]
        padded = log_probs.float().masked_fill(~valid[..., None], NEG_INF)
        padded[..., blank_id] = padded[..., blank_id].masked_fill(~valid, 0.0)
        self.log_probs = padded.transpose(1, 2).contiguous()  # (B, V, T)
        self.blank_id = blank_id
        self.eos_id = eos_id
        if frames == 0:
            raise ValueError("CtcPrefixScorer needs at least one frame")
        self.num_frames = frames

    def init_state(self, owner: Tensor) -> CtcPrefixState:
        """Empty hypotheses for the utterances ``owner`` (N,)."""
        blank = self.log_probs[owner, self.blank_id]  # (N, T)
        r = torch.full((self.num_frames, 2, owner.shape[0]), NEG_INF, device=owner.device)
        r[:, 1] = blank.cumsum(dim=1).t()
        zeros = torch.zeros_like(owner)
        return CtcPrefixState(
            r, torch.zeros(owner.shape, device=owner.device), zeros - 1, zeros, owner
        )

    def score(self, state: CtcPrefixState, candidates: Tensor) -> tuple[Tensor, Tensor]:
        """Prefix scores of every hypothesis extended by each candidate.

        Args:
            state: N hypotheses. candidates: (N, C) token ids.

        Returns:
            psi: (N, C) prefix log-probabilities of ``h c`` (of ``h`` complete for eos).
            r: (T, 2, N, C) forward variables of the extensions, for :meth:`advance`.
        """
        frames = self.num_frames
        num = candidates.shape[0]
        x = self.log_probs[state.owner[:, None], candidates]  # (N, C, T)
        x = x.permute(2, 0, 1)  # (T, N, C)
        x_blank = self.log_probs[state.owner, self.blank_id].t()[:, :, None]  # (T, N, 1)
        total = torch.logaddexp(state.r[:, 0], state.r[:, 1])  # (T, N)
        repeat = candidates == state.last[:, None]
        phi = torch.where(repeat[None], state.r[:, 1, :, None], total[:, :, None])  # (T, N, C)
        first = torch.where((state.length == 0)[:, None], x[0], NEG_INF)  # r'[0, 0]: (N, C)
        # an extension of a hypothesis with L tokens cannot end before frame L
        start = min(max(1, int(state.length.min()) if num else 1), frames)
        label_rows = [torch.full_like(first, NEG_INF)] * (start - 1) + [first]
        blank_rows = [torch.full_like(first, NEG_INF)] * start
        for t in range(start, frames):
            label_rows.append(torch.logaddexp(label_rows[-1], phi[t - 1]) + x[t])
            blank_rows.append(torch.logaddexp(label_rows[-2], blank_rows[-1]) + x_blank[t])
        r = torch.stack([torch.stack(label_rows), torch.stack(blank_rows)], dim=1)  # (T,2,N,C)
        terms = torch.cat([first[None], phi[:-1] + x[1:]], dim=0)
        psi = terms.logsumexp(dim=0)
        is_eos = candidates == self.eos_id
        psi = torch.where(is_eos, total[-1][:, None].expand_as(psi), psi)
        return psi, r

    def advance(
        self,
        state: CtcPrefixState,
        psi: Tensor,
        r: Tensor,
        parent: Tensor,
        column: Tensor,
        tokens: Tensor,
    ) -> CtcPrefixState:
        """State of the chosen extensions: row ``parent[i]`` extended by candidate
        ``column[i]`` (token ``tokens[i]``); all (N',)."""
        return CtcPrefixState(
            r=r[:, :, parent, column],
            psi=psi[parent, column],
            last=tokens,
            length=state.length[parent] + 1,
            owner=state.owner[parent],
        )
