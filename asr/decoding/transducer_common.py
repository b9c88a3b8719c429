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

TDT moves are restricted to the paths the TDT loss scores (:mod:`asr.losses.tdt`): a path ends
with a blank landing exactly on the last frame ``T``. So from frame ``t`` a token may move by
``d`` only if ``t + d < T`` (a blank must still follow it) and a blank only if ``t + d <= T``;
both must land on a frame from which ``T`` can still be reached by positive durations (always,
when 1 is a duration). Where ``max_symbols_per_frame`` is reached, a token of duration 0 is
excluded too (rather than moved by one frame after being scored as duration 0, which is no
loss path). :meth:`TransducerScorer.tdt_move_masks` gives these restrictions as additive
masks, for a known ``T`` or for an unknown one (a stream whose end has not come: only the
``max_symbols_per_frame`` rule). The TDT greedy and beam searches use the same masks, so with
beam 1 they take the same decisions.

Shape legend: N hypotheses (rows), T frames, D encoder dims, J joiner dims, V vocabulary incl.
blank, K durations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from asr.heads.transducer import TransducerHead

__all__ = ["TransducerScorer"]

NEG_INF = float("-inf")


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
        self._table_cache: dict[torch.device, tuple[Tensor | None, Tensor]] = {}
        self._move_mask_cache: dict[torch.device, Tensor] = {}
        self._moves = _allowed_moves(self.durations) if self.is_tdt else None
        self._index_is_duration = self.durations == tuple(range(len(self.durations)))

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

    def _tables(self, device: torch.device) -> tuple[Tensor | None, Tensor]:
        """Cached lookup tensors on ``device``: the additive blank-penalty vector (V,) (None
        without a penalty) and the move class of each joiner output (V + K,): 0 blank, 1 a
        token (the row of :meth:`tdt_move_masks` it takes), 2 a duration (never a label: the
        masks of :meth:`position_masks` give it no move)."""
        if device not in self._table_cache:
            penalty = None
            if self.blank_penalty:
                penalty = torch.zeros(self.vocab_size, device=device)
                penalty[self.blank_id] = -self.blank_penalty
            label_class = torch.ones(
                self.vocab_size + len(self.durations), dtype=torch.int64, device=device
            )
            label_class[self.blank_id] = 0
            label_class[self.vocab_size :] = 2
            self._table_cache[device] = (penalty, label_class)
        return self._table_cache[device]

    def tdt_move_masks(
        self, remaining: Tensor | None, no_stay: Tensor | None, device: torch.device
    ) -> Tensor:
        """Additive masks (0 or -inf) of the durations blank / a token may take: (N, 2, K),
        ``[:, 0]`` for blank and ``[:, 1]`` for every token.

        Args:
            remaining: (N,) int64 frames from each row's frame to the last one, ``T - t``
                (>= 1 for a row that decides); None where ``T`` is not known yet (a stream):
                then only ``no_stay`` and "blank never stays" apply.
            no_stay: (N,) bool, rows that reached ``max_symbols_per_frame`` (a token must then
                move); None for none.
            device: where the masks go.

        Returns:
            (N, 2, K), or (1, 2, K) when both arguments are None.
        """
        if self._moves is None:
            raise ValueError("move masks exist for TDT heads only")
        if device not in self._move_mask_cache:
            allowed = self._moves.allowed
            table = torch.zeros(allowed.shape).masked_fill(~allowed, NEG_INF)
            self._move_mask_cache[device] = table.flatten(0, 1).to(device)  # (2 * R, 2, K)
        table = self._move_mask_cache[device]
        rows, cap = self._moves.rows, self._moves.cap
        if remaining is None:
            index = torch.full((1,), rows - 1, dtype=torch.int64, device=device)
        elif self._moves.period == 1:
            index = remaining.clamp(0, cap)
        else:
            period = self._moves.period
            remaining = remaining.clamp(min=0)
            index = torch.where(remaining < cap, remaining, cap + (remaining - cap) % period)
        if no_stay is not None:
            index = torch.add(index, no_stay, alpha=rows)
        return table[index]

    @property
    def lookahead(self) -> int | None:
        """TDT: the fewest frames ``r0`` from a frame to the end (``T - t``, counting ``t``)
        from which on the allowed moves no longer depend on ``T`` (every ``r >= r0`` has the
        masks of ``r0``): a streaming search decides on frame ``t`` once frame ``t + r0 - 1`` has
        arrived. None where they depend on ``T`` for ever (the positive durations share a
        factor > 1: only the end can tell). Always > ``max(durations)``."""
        if self._moves is None:
            raise ValueError("the lookahead exists for TDT heads only")
        return self._moves.settled

    @property
    def can_stop(self) -> bool:
        """Whether a TDT row can be left with no allowed move (``T`` unreachable from some
        frame: only when 1 is not a duration)."""
        return self._moves is not None and self._moves.can_stop

    def position_masks(
        self, remaining: Tensor | None, num_positions: int, device: torch.device
    ) -> Tensor | None:
        """The additive move masks of :meth:`decide` for every frame position of a search.

        Args:
            remaining: (P,) int64 frames from each position to the last frame of its
                utterance (any value where no decision is taken); None where the end is not
                known yet (a stream): every position gets the unknown-end masks.
            num_positions: P.
            device: where the masks go.

        Returns:
            (2 * P, 3, K): row ``p`` for position ``p``, row ``P + p`` for it with
            ``no_stay``; ``[:, :2]`` are the masks of :meth:`tdt_move_masks` (blank, tokens)
            and ``[:, 2]`` is all ``-inf`` (the duration outputs, which are no label). None for
            RNN-T.
        """
        if not self.is_tdt:
            return None
        both = torch.tensor([False, True], device=device)
        if remaining is None:
            masks = self.tdt_move_masks(None, both, device)  # (2, 2, K)
            masks = masks.repeat_interleave(num_positions, dim=0)
        else:
            masks = torch.cat(
                [self.tdt_move_masks(remaining, flag.expand_as(remaining), device) for flag in both]
            )
        return torch.cat([masks, torch.full_like(masks[:, :1], NEG_INF)], dim=1)

    def output_bias(self, device: torch.device) -> Tensor | None:
        """The joiner's output bias with the blank penalty subtracted from the blank logit, for
        :meth:`decide` (computed per call: it follows the current weights); None without a
        penalty."""
        penalty, _ = self._tables(device)
        if penalty is None:
            return None
        output = self.head.joiner.output
        size = output.weight.shape[0]
        bias = output.bias if output.bias is not None else output.weight.new_zeros(size)
        return bias + torch.nn.functional.pad(penalty, (0, size - self.vocab_size))

    def decide(
        self,
        enc_proj: Tensor,
        pred_proj: Tensor,
        output_bias: Tensor | None,
        masks: Tensor | None = None,
        remaining: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Best (label, duration) per row (see the module docstring), with its score left
        unnormalised: the normalisers are computed later for many decisions at once
        (:meth:`decision_log_probs`), since at small batches a decision costs its operator
        count.

        For RNN-T the argmax of the token logits. For TDT the argmax over the (V, K) grid of
        ``token logit + duration logit`` plus ``masks`` (N, 3, K) (rows of
        :meth:`position_masks`: the allowed moves of blank in ``[:, 0]`` and of every token in
        ``[:, 1]``), found without building the grid: the masks depend only on the label's
        class, so each class' best duration is found first (N, 3), then the best label with
        it (over all V + K outputs: the durations' class has no move, so no slice is
        needed). Ties go to the lower (label, duration) index. The argmax is that of the
        log-probabilities: they differ from the logits by per-row constants.

        Args:
            enc_proj, pred_proj: (N, J) projected frame and predictor output of each row.
            output_bias: :meth:`output_bias` (the blank penalty), or None.
            masks: (N, 3, K) for TDT.
            remaining: (N,) int64 ``T - t`` of each row where the end is known, for rows with
                no allowed move (only read when :attr:`can_stop`).

        Returns:
            label (N,) int64; advance (N,) frames to move (RNN-T: bool, True for blank);
            is_blank (N,) bool; best (N,) float32 unnormalised score of the decision (-inf for
            a TDT row with no allowed move: it gets blank and ``advance = remaining``);
            logits (N, V + K) float32 with the blank penalty, for
            :meth:`decision_log_probs`.
        """
        logits = self.head.joiner.join(enc_proj, pred_proj, output_bias)
        if logits.dtype != torch.float32:
            logits = logits.float()
        if not self.is_tdt:
            best, label = logits.max(dim=-1)
            is_blank = label == self.blank_id
            return label, is_blank, is_blank, best, logits
        assert masks is not None
        _, label_class = self._tables(logits.device)
        # the best allowed duration of blank and of a token (N, 3), then the best label with its
        # class's best duration: the argmax of the (V, K) grid without building it
        move_best, move = (logits[:, None, self.vocab_size :] + masks).max(dim=-1)
        best, label = (logits + move_best.index_select(1, label_class)).max(dim=-1)
        if not self._index_is_duration:
            move = self.duration_values(logits.device)[move]
        is_blank = label == self.blank_id
        blank_move, token_move, _ = move.unbind(1)
        advance = torch.where(is_blank, blank_move, token_move)
        if remaining is not None and self.can_stop:  # nothing allowed: to the end, p = 0
            advance = torch.where(best == NEG_INF, remaining, advance)
        return label, advance, is_blank, best, logits

    def decision_log_probs(self, best: Tensor, logits: Tensor) -> Tensor:
        """Log-probabilities of decisions of :meth:`decide`: best (...,), logits (..., V + K)
        -> (...,) ``best`` less the normalisers of the token distribution (its logits carry
        the blank penalty) and, for TDT, of the duration distribution."""
        log_prob = best - torch.logsumexp(logits[..., : self.vocab_size], dim=-1)
        if self.is_tdt:
            log_prob = log_prob - torch.logsumexp(logits[..., self.vocab_size :], dim=-1)
        return log_prob


@dataclass(frozen=True)
class _AllowedMoves:
    """Which TDT durations blank / a token may take with ``r`` frames left (``r = T - t``).

    Attributes:
        allowed: (2, R, 2, K) bool: ``[no_stay, r, 0 for blank | 1 for a token, duration]``.
        rows: R. Row ``r`` for ``r < cap``, row ``cap + (r - cap) % period`` beyond; the last
            row ``R - 1`` is the unknown end (only ``no_stay`` and "blank moves" apply).
        cap, period: see ``rows``.
        can_stop: whether some ``r >= 1`` allows no move at all (``T`` unreachable).
        settled: the smallest ``r`` from which every row is that of ``cap`` (None when
            ``period > 1``: the rows then cycle for ever).
    """

    allowed: Tensor
    rows: int
    cap: int
    period: int
    can_stop: bool
    settled: int | None


def _allowed_moves(durations: tuple[int, ...]) -> _AllowedMoves:
    """The table of :class:`_AllowedMoves` (see the module docstring).

    A landing frame ``t'`` can still end the path iff ``T - t'`` is a sum of positive
    durations (0 counts: the final blank has just landed on ``T``). With ``g`` the gcd of the
    positive durations, every multiple of ``g`` above ``m^2`` (``m`` the longest duration; the
    Frobenius number of the durations is below it, Schur's bound) is such a sum, and no other
    number is: so the rows repeat with period ``g`` once ``r - m > m^2``.
    """
    positive = [d for d in durations if d > 0]
    period = math.gcd(*positive)
    longest = max(durations)
    horizon = longest * longest
    sums = [True] + [False] * horizon
    for n in range(1, horizon + 1):
        sums[n] = any(n >= d and sums[n - d] for d in positive)

    def completes(left: int) -> bool:
        if left < 0:
            return False
        return sums[left] if left <= horizon else left % period == 0

    cap = horizon + longest + 1
    rows = cap + period + 1
    allowed = torch.zeros(2, rows, 2, len(durations), dtype=torch.bool)
    for r in range(rows - 1):
        for k, d in enumerate(durations):
            allowed[:, r, 0, k] = d > 0 and completes(r - d)
            allowed[:, r, 1, k] = r - d >= 1 and completes(r - d)
    is_zero = torch.tensor([d == 0 for d in durations])
    allowed[:, rows - 1, 0] = ~is_zero
    allowed[:, rows - 1, 1] = True
    allowed[1, :, 1, is_zero] = False  # no_stay: a token must move
    can_stop = bool((~allowed[0, 1 : rows - 1].flatten(1).any(dim=1)).any())
    settled = None
    if period == 1:
        settled = cap
        while settled > 0 and torch.equal(allowed[:, settled - 1], allowed[:, cap]):
            settled -= 1
    return _AllowedMoves(allowed, rows, cap, period, can_stop, settled)
