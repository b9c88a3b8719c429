"""Transducer predictors (prediction networks).

* :class:`StatelessPredictor`: embedding + causal depthwise Conv1d over the last ``context_size``
  tokens (Ghodsi et al. 2020, "RNN-Transducer with Stateless Prediction Network", ICASSP; the
  ``context_size = 2`` variant of the pruned RNN-T recipes). Its state is the previous
  ``context_size - 1`` tokens (blank = 0 at the start), so together with the input token the
  convolution sees the last ``context_size`` tokens.
* :class:`LstmPredictor`: embedding + LSTM + linear (Graves 2012, arXiv:1211.3711).

Both implement ``forward(tokens (B, U), state) -> (pred (B, U, P), state)`` and
``init_state(batch_size, device)``. Training feeds ``[blank] + tokens`` (U + 1 inputs) from the
initial state; searches feed one token per step with the carried state. States are frozen
dataclasses; field metadata ``batch_dim`` names each tensor's batch dimension for the generic
stack / unstack helpers (:func:`asr.state.state_field`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from asr.encoders.dropout import Dropout
from asr.state import state_field

__all__ = [
    "Predictor",
    "StatelessState",
    "StatelessPredictor",
    "LstmState",
    "LstmPredictor",
]


class Predictor(Protocol):
    """What transducer heads and searches need from a prediction network."""

    output_dim: int

    def init_state(self, batch_size: int, device: torch.device | str) -> object: ...

    def __call__(self, tokens: Tensor, state: object) -> tuple[Tensor, object]: ...


@dataclass(frozen=True)
class StatelessState:
    """Previous tokens. context: (B, context_size - 1) int64, oldest first."""

    context: Tensor = state_field(batch_dim=0)


@dataclass(frozen=True)
class LstmState:
    """LSTM state. hidden, cell: (num_layers, B, H)."""

    hidden: Tensor = state_field(batch_dim=1)
    cell: Tensor = state_field(batch_dim=1)


class StatelessPredictor(nn.Module):
    """Embedding + causal depthwise convolution over the last ``context_size`` tokens.

    Args:
        vocab_size: V including blank. pred_dim: P (embedding and output size).
        context_size: tokens the convolution sees (>= 1; 1 = embedding only).
        blank_id: token that fills the initial context.
    """

    def __init__(
        self, vocab_size: int, pred_dim: int, context_size: int = 2, blank_id: int = 0
    ) -> None:
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {context_size}")
        self.output_dim = pred_dim
        self.context_size = context_size
        self.blank_id = blank_id
        self.embedding = nn.Embedding(vocab_size, pred_dim)
        self.conv = (
            nn.Conv1d(pred_dim, pred_dim, context_size, groups=pred_dim, bias=False)
            if context_size > 1
            else None
        )

    def init_state(self, batch_size: int, device: torch.device | str) -> StatelessState:
        context = torch.full(
            (batch_size, self.context_size - 1), self.blank_id, dtype=torch.int64, device=device
        )
        return StatelessState(context=context)

    def forward(self, tokens: Tensor, state: StatelessState) -> tuple[Tensor, StatelessState]:
        """tokens (B, U) -> pred (B, U, P), state holding the last ``context_size - 1`` tokens."""
        history = torch.cat([state.context.to(tokens.device), tokens.to(torch.int64)], dim=1)
        emb = self.embedding(history)  # (B, U + c - 1, P)
        if self.conv is not None:
            emb = self.conv(emb.transpose(1, 2)).transpose(1, 2)  # (B, U, P)
        keep = self.context_size - 1
        new_state = StatelessState(context=history[:, history.shape[1] - keep :])
        return torch.relu(emb), new_state

    def step(self, tokens: Tensor, state: StatelessState) -> tuple[Tensor, StatelessState]:
        """One token per row, for searches: tokens (N,) -> pred (N, P), state.

        Equals ``forward(tokens[:, None], state)`` (up to float rounding) but computes the
        single convolution output as a weighted sum of the ``context_size`` embeddings: a
        depthwise Conv1d call costs ~100 us on CPU, which dominated a greedy search step.
        """
        history = torch.cat([state.context.to(tokens.device), tokens.long()[:, None]], dim=1)
        emb = self.embedding(history)  # (N, context_size, P)
        if self.conv is None:
            pred = emb[:, 0]
        else:  # Conv1d is a cross-correlation: out = sum_k weight[:, 0, k] * emb[k]
            pred = (emb * self.conv.weight[:, 0, :].t()).sum(dim=1)
        keep = self.context_size - 1
        return torch.relu(pred), StatelessState(context=history[:, history.shape[1] - keep :])


class LstmPredictor(nn.Module):
    """Embedding + LSTM + output projection.

    Args:
        vocab_size: V including blank. pred_dim: P (output size).
        hidden_dim: H (embedding and LSTM size). num_layers: LSTM layers.
        dropout: dropout after the embedding and between LSTM layers.
    """

    def __init__(
        self,
        vocab_size: int,
        pred_dim: int,
        hidden_dim: int = 320,
        num_layers: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.output_dim = pred_dim
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.embedding = nn.Embedding(vocab_size, hidden_dim)
        self.dropout = Dropout(dropout)
        self.lstm = nn.LSTM(
            hidden_dim,
            hidden_dim,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.output = nn.Linear(hidden_dim, pred_dim)

    def init_state(self, batch_size: int, device: torch.device | str) -> LstmState:
        """Zero state of ``batch_size`` streams, in the dtype of the weights."""
        dtype = self.output.weight.dtype
        zeros = torch.zeros(
            self.num_layers, batch_size, self.hidden_dim, device=device, dtype=dtype
        )
        return LstmState(hidden=zeros, cell=zeros.clone())

    def forward(self, tokens: Tensor, state: LstmState) -> tuple[Tensor, LstmState]:
        """tokens (B, U) -> pred (B, U, P), new LSTM state."""
        emb = self.dropout(self.embedding(tokens.to(torch.int64)))
        out, (hidden, cell) = self.lstm(emb, (state.hidden, state.cell))
        return self.output(out), LstmState(hidden=hidden, cell=cell)

    def step(self, tokens: Tensor, state: LstmState) -> tuple[Tensor, LstmState]:
        """One token per row, for searches: tokens (N,) -> pred (N, P), state."""
        pred, state = self.forward(tokens[:, None], state)
        return pred[:, 0], state
