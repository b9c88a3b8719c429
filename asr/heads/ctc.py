"""CTC head: a linear projection of the encoder output to log-probabilities over tokens + blank.

Graves et al. 2006, "Connectionist Temporal Classification: Labelling Unsegmented Sequence Data
with Recurrent Neural Networks". The loss is :func:`asr.losses.ctc.ctc_loss`; utterances whose
targets need more frames than they have, or that have no frames, are zeroed and counted in
``metrics["num_infinite"]``, as the transducer head does with its losses.

Shape legend: B batch, T frames, U tokens, D encoder dims, V vocabulary including blank (id 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from asr.encoders.base import zero_padding
from asr.encoders.dropout import Dropout
from asr.losses.ctc import ctc_loss
from asr.losses.precision import loss_dtype
from asr.types import LossOutput

__all__ = ["CTCConfig", "CTCHead"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CTCConfig:
    """Configuration of :class:`CTCHead`.

    Attributes:
        dropout: dropout on the encoder output before the projection.
        blank_id: index of the blank symbol.
    """

    dropout: float = 0.0
    blank_id: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class CTCHead(nn.Module):
    """Linear + log-softmax over the encoder output, trained with the CTC loss.

    Args:
        cfg: head configuration.
        enc_dim: encoder output dimension D.
        vocab_size: V, including blank.
    """

    def __init__(self, cfg: CTCConfig, enc_dim: int, vocab_size: int) -> None:
        super().__init__()
        if not 0 <= cfg.blank_id < vocab_size:
            raise ValueError(f"blank_id={cfg.blank_id} is outside the vocabulary of {vocab_size}")
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.dropout = Dropout(cfg.dropout)
        self.output = nn.Linear(enc_dim, vocab_size)

    @property
    def blank_id(self) -> int:
        return self.cfg.blank_id

    def logits(self, enc: Tensor, dropout: bool = True) -> Tensor:
        """(B, T, D) -> (B, T, V) unnormalised scores (in the autocast dtype, if any);
        ``dropout`` False: the eval-mode scores in either mode (for an alignment that must not
        depend on the dropout draw, e.g. the CIF head's CTC segments while training)."""
        return self.output(self.dropout(enc) if dropout else enc)

    def log_probs(self, enc: Tensor, dropout: bool = True) -> Tensor:
        """(B, T, D) -> (B, T, V) float32 log-probabilities (float64 in a float64 model);
        ``dropout`` as in :meth:`logits`."""
        logits = self.logits(enc, dropout)
        return torch.log_softmax(logits.to(loss_dtype(logits)), dim=-1)

    def forward(self, enc: Tensor) -> Tensor:
        """Same as :meth:`log_probs`."""
        return self.log_probs(enc)

    def loss(
        self, enc: Tensor, enc_lens: Tensor, tokens: Tensor, token_lens: Tensor,
        step: int | None = None,
    ) -> LossOutput:
        """CTC loss summed over the batch.

        Args:
            enc: (B, T, D) encoder output.
            enc_lens: (B,) valid frames.
            tokens: (B, U) target ids, padded with 0 beyond ``token_lens``.
            token_lens: (B,) number of target tokens.

        Returns:
            LossOutput with metrics ``ctc_loss`` (summed) and ``num_infinite`` (utterances with
            no valid alignment, whose loss and gradient were zeroed).
        """
        enc = zero_padding(enc, enc_lens)  # padding garbage would reach the gradients (0 * nan)
        losses, infeasible = ctc_loss(
            self.log_probs(enc), enc_lens, tokens, token_lens, blank_id=self.blank_id
        )
        loss = losses.sum()
        num_infinite = int(infeasible.sum().item())
        if num_infinite:
            logger.warning(
                "CTC: %d of %d utterances have more tokens (+repeats) than frames, or no "
                "frames; their loss was zeroed",
                num_infinite,
                enc.shape[0],
            )
        return LossOutput(
            loss=loss,
            num_utterances=enc.shape[0],
            metrics={"ctc_loss": float(loss.detach()), "num_infinite": float(num_infinite)},
        )
