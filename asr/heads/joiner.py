"""The shared transducer joiner API (Graves 2012, arXiv:1211.3711; TDT outputs after Xu et al.
2023, arXiv:2304.06795).

``logits = output(act(project_encoder(enc) + project_predictor(pred)))``. The two projections run
BEFORE any (T, U) broadcast, on (B, T, D) and (B, U + 1, P); :meth:`Joiner.join` then adds any
broadcastable pair of projected tensors: the full lattice ``(B, T, 1, J) + (B, 1, U + 1, J)``,
the pruned band ``(B, T, R, J) + (B, T, R, J)``, or one search step ``(N, J) + (N, J)``.
That is what makes the pruned loss cheap. The output has ``V + num_durations`` logits:
``num_durations = 0`` for RNN-T, ``len(durations)`` for TDT (token logits first).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Joiner"]


class Joiner(nn.Module):
    """Additive joiner with separate input projections.

    Args:
        enc_dim: D, encoder output size. pred_dim: P, predictor output size.
        joiner_dim: J, the hidden size the two projections meet in.
        vocab_size: V including blank (id 0).
        num_durations: extra duration logits (TDT), 0 for RNN-T.
        activation: ``"tanh"`` or ``"relu"``.
    """

    def __init__(
        self,
        enc_dim: int,
        pred_dim: int,
        joiner_dim: int,
        vocab_size: int,
        num_durations: int = 0,
        activation: Literal["tanh", "relu"] = "tanh",
    ) -> None:
        super().__init__()
        if activation not in ("tanh", "relu"):
            raise ValueError(f"joiner activation must be tanh|relu, got {activation!r}")
        if num_durations < 0 or vocab_size < 2:
            raise ValueError(
                f"need vocab_size >= 2 and num_durations >= 0, got {vocab_size}, {num_durations}"
            )
        self.vocab_size = vocab_size
        self.num_durations = num_durations
        self.activation = activation
        self.encoder_proj = nn.Linear(enc_dim, joiner_dim)
        self.predictor_proj = nn.Linear(pred_dim, joiner_dim)
        self.output = nn.Linear(joiner_dim, vocab_size + num_durations)

    def project_encoder(self, enc: Tensor) -> Tensor:
        """(..., D) -> (..., J)."""
        return self.encoder_proj(enc)

    def project_predictor(self, pred: Tensor) -> Tensor:
        """(..., P) -> (..., J)."""
        return self.predictor_proj(pred)

    def join(
        self, enc_proj: Tensor, pred_proj: Tensor, output_bias: Tensor | None = None
    ) -> Tensor:
        """Broadcasting add of projected inputs -> logits (..., V + num_durations).

        ``output_bias`` (V + num_durations,) replaces the output layer's bias (searches fold
        their blank penalty into it)."""
        hidden = enc_proj + pred_proj
        hidden = torch.tanh(hidden) if self.activation == "tanh" else torch.relu(hidden)
        bias = self.output.bias if output_bias is None else output_bias
        return F.linear(hidden, self.output.weight, bias)

    def forward(self, enc: Tensor, pred: Tensor) -> Tensor:
        """Full lattice logits: enc (B, T, D), pred (B, U + 1, P) -> (B, T, U + 1, V + nd)."""
        enc_proj = self.project_encoder(enc)[:, :, None, :]
        pred_proj = self.project_predictor(pred)[:, None, :, :]
        return self.join(enc_proj, pred_proj)
