"""What every transducer searcher needs from a :class:`~asr.heads.transducer.TransducerHead`.

:class:`TransducerScorer` wraps a head for search: projected encoder frames, the projected
predictor output after one more token (``predictor`` + ``project_predictor``), joiner logits
split into token and duration log-probabilities, and the one-step decision rule shared by the
RNN-T and TDT greedy searchers (Graves 2012, arXiv:1211.3711; Xu et al. 2023, "Efficient
Sequence Transduction by Jointly Predicting Tokens and Durations", arXiv:2304.06795).

An RNN-T is the TDT special case in which tokens take duration 0 and blanks duration 1, so one
decision rule serves both: the best (label, duration) pair under ``P(label) * P(duration)``
where blank may not take duration 0 (its duration-0 mass is lost in the TDT loss, so the model
never means "blank and stay"). This joint argmax differs from the paper's independent argmaxes
only when blank is the best label, 0 the best duration and the best positive duration so
unlikely that a token beats it; it makes beam search with beam 1 equal greedy search.

Where ``max_symbols_per_frame`` is reached, TDT excludes duration 0 for the token that would be
the last one allowed on its frame (:meth:`TransducerScorer.tdt_move_masks`), so that every
decision keeps its own probability: moving such a token by one frame after scoring it as
duration 0 is no arc of the TDT lattice, and in beam search it made two moves of one hypothesis
collide (same tokens, same frame). The TDT greedy and beam searches use the same masks, so with
beam 1 they take the same decisions.

Shape legend: N hypotheses (rows), T frames, D encoder dims, J joiner dims, V vocabulary incl.
blank, K durations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from asr.heads.transducer import TransducerHead

__all__ = ["Decision", "TransducerScorer"]

NEG_INF = float("-inf")

Decision = tuple[Tensor, Tensor, Tensor]  # label (N,), advance (N,), log_prob (N,)


class TransducerScorer:
    """Search-side view of a transducer head (RNN-T or TDT).

    Args:
        head: the transducer head.
        blank_penalty: subtracted from the blank logit before every decision.
    """

    def __init__(self, head: TransducerHead, blank_penalty: float = 0.0) -> None:
        self.head = head
        self.blank_id = head.blank_id
        self.vocab_size = head.vocab_size
        self.blank_penalty = blank_penalty
        self.durations = head.durations  # () for RNN-T
        self.is_tdt = bool(self.durations)
        self._duration_values: dict[torch.device, Tensor] = {}
        self._table_cache: dict[torch.device, tuple[Tensor | None, Tensor, Tensor, Tensor]] = {}
        self._move_mask_cache: dict[torch.device, Tensor] = {}

    def duration_values(self, device: torch.device) -> Tensor:
        """(K,) int64 durations on ``device``."""
        if device not in self._duration_values:
            self._duration_values[device] = torch.tensor(
                self.durations, dtype=torch.int64, device=device
            )
        return self._duration_values[device]

    def project_encoder(self, enc: Tensor) -> Tensor:
        """(..., D) -> (..., J)."""
        return self.head.joiner.project_encoder(enc)

    def initial(self, batch_size: int, device: torch.device | str) -> tuple[Tensor, Any]:
        """Projected predictor output after ``<blank>`` (the start symbol) and its state."""
        state = self.head.predictor.init_state(batch_size, device)
        start = torch.full((batch_size,), self.blank_id, dtype=torch.int64, device=device)
        return self.predict(start, state)

    def predict(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Feeds one token per row: tokens (N,) -> projected predictor output (N, J), state."""
        predictor = self.head.predictor
        if hasattr(predictor, "step"):  # one-token fast path of our predictors
            pred, state = predictor.step(tokens, state)
        else:
            pred, state = predictor(tokens[:, None], state)
            pred = pred[:, 0]
        return self.head.joiner.project_predictor(pred), state

    def log_probs(self, enc_proj: Tensor, pred_proj: Tensor) -> tuple[Tensor, Tensor | None]:
        """Joins (N, J) and (N, J) -> token log-probs (N, V) and duration log-probs (N, K)
        (None for RNN-T), both float32; the blank logit is lowered by ``blank_penalty``."""
        logits = self.head.joiner.join(enc_proj, pred_proj).float()
        token_logits = logits[..., : self.vocab_size]
        if self.blank_penalty:
            token_logits = token_logits.clone()
            token_logits[..., self.blank_id] -= self.blank_penalty
        token_lp = torch.log_softmax(token_logits, dim=-1)
        if not self.is_tdt:
            return token_lp, None
        return token_lp, torch.log_softmax(logits[..., self.vocab_size :], dim=-1)

    def blank_duration_mask(self, device: torch.device) -> Tensor:
        """(K,) bool, True where blank may take that duration (> 0)."""
        return self.duration_values(device) > 0

    def _tables(self, device: torch.device) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        """Cached lookup tensors on ``device``: the additive blank-penalty vector (V,) (None
        without a penalty), and for TDT the mask row of each label (V,) (0 blank, 1 a token)
        and the label and duration of each flat (label, duration) index (V * K,)."""
        if device not in self._table_cache:
            penalty = None
            if self.blank_penalty:
                penalty = torch.zeros(self.vocab_size, device=device)
                penalty[self.blank_id] = -self.blank_penalty
            durations = self.duration_values(device)
            num = max(len(durations), 1)
            label_class = torch.ones(self.vocab_size, dtype=torch.int64, device=device)
            label_class[self.blank_id] = 0
            flat = torch.arange(self.vocab_size * num, device=device)
            advance = durations[flat % num] if self.is_tdt else flat
            self._table_cache[device] = (penalty, label_class, flat // num, advance)
        return self._table_cache[device]

    def tdt_move_masks(self, no_stay: Tensor | None, device: torch.device) -> Tensor:
        """Additive masks (0 or -inf) of the durations blank / a token may take: (N, 2, K),
        ``[:, 0]`` for blank (never 0) and ``[:, 1]`` for every token (not 0 where
        ``no_stay``).

        Args:
            no_stay: (N,) bool, rows that reached ``max_symbols_per_frame`` (a token must then
                move); None for none (then the result is (1, 2, K)).
            device: where the masks go.
        """
        if not self.is_tdt:
            raise ValueError("move masks exist for TDT heads only")
        if device not in self._move_mask_cache:
            stays = torch.tensor([d == 0 for d in self.durations])
            table = torch.zeros(2, 2, len(self.durations))  # [no_stay, blank | token, duration]
            table[:, 0, stays] = NEG_INF
            table[1, 1, stays] = NEG_INF
            self._move_mask_cache[device] = table.to(device)
        table = self._move_mask_cache[device]
        if no_stay is None:
            return table[:1]
        return table[no_stay.long()]

    def decide(
        self, enc_proj: Tensor, pred_proj: Tensor, no_stay: Tensor | None = None
    ) -> Decision:
        """Best (label, duration) per row: see the module docstring.

        One argmax over the (V, K) grid of ``token logit + duration logit`` (blank with
        duration 0 excluded, and tokens with duration 0 in the ``no_stay`` rows: see
        :meth:`tdt_move_masks`; for RNN-T over the V token logits, ``no_stay`` unused), then
        one ``logsumexp`` per distribution for the score: the comparisons are those of the
        log-probabilities, shifted by the same normalisers. Ties go to the lower (label,
        duration) index.

        Returns:
            label (N,) int64, advance (N,) int64 frames to move (RNN-T: 1 for blank, 0 for a
            token), log_prob (N,) float32 of the decision (token + duration log-probs).
        """
        logits = self.head.joiner.join(enc_proj, pred_proj).float()
        penalty, label_class, label_of, advance_of = self._tables(logits.device)
        token_logits = logits[:, : self.vocab_size]
        if penalty is not None:
            token_logits = token_logits + penalty
        if not self.is_tdt:
            best, label = token_logits.max(dim=-1)
            log_prob = best - torch.logsumexp(token_logits, dim=-1)
            return label, (label == self.blank_id).long(), log_prob
        dur_logits = logits[:, self.vocab_size :]
        masks = self.tdt_move_masks(no_stay, logits.device).index_select(1, label_class)
        grid = token_logits[:, :, None] + dur_logits[:, None, :] + masks  # (N, V, K)
        best, flat = grid.flatten(1).max(dim=-1)
        normaliser = torch.logsumexp(token_logits, dim=-1) + torch.logsumexp(dur_logits, dim=-1)
        return label_of[flat], advance_of[flat], best - normaliser
