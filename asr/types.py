"""Typed values passed between data, models, losses and searches.

Shape legend: B batch, T frames, F feature bins, U tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

#: Padding value of ``Batch.tokens`` beyond ``token_lens`` (never read by a loss).
TOKEN_PAD_ID = 0


@dataclass(frozen=True)
class Batch:
    """One training or decoding batch.

    Attributes:
        feats: (B, T, F) float features, zero-padded beyond ``feat_lens``.
        feat_lens: (B,) int64 number of valid frames per utterance.
        tokens: (B, U) int64 token ids, padded with ``TOKEN_PAD_ID`` beyond ``token_lens``.
        token_lens: (B,) int64 number of tokens per utterance.
        texts: B reference transcripts (normalised text the tokens were made from).
        cut_ids: B lhotse cut ids, for reports and resumable sampling.
    """

    feats: Tensor
    feat_lens: Tensor
    tokens: Tensor
    token_lens: Tensor
    texts: list[str] = field(default_factory=list)
    cut_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        batch_size = self.feats.shape[0]
        if self.feats.dim() != 3:
            raise ValueError(f"Batch.feats must be (B, T, F), got shape {tuple(self.feats.shape)}")
        for name in ("feat_lens", "tokens", "token_lens"):
            value = getattr(self, name)
            if value.shape[0] != batch_size:
                raise ValueError(
                    f"Batch.{name} has batch size {value.shape[0]}, "
                    f"expected {batch_size} (from feats)"
                )

    @property
    def batch_size(self) -> int:
        return self.feats.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        """Returns a copy with every tensor on ``device``."""
        return replace(
            self,
            feats=self.feats.to(device),
            feat_lens=self.feat_lens.to(device),
            tokens=self.tokens.to(device),
            token_lens=self.token_lens.to(device),
        )


@dataclass(frozen=True)
class Hypothesis:
    """One recognition result.

    Attributes:
        tokens: token ids without blanks.
        score: total log-probability (or the searcher's score) of the hypothesis.
        frames: encoder frame index at which each token was emitted (same length as
            ``tokens``; for CIF the frame at which the token fired); empty for searchers
            without alignment (AED). :class:`asr.results.ResultBuilder` turns them into seconds.
    """

    tokens: tuple[int, ...]
    score: float = 0.0
    frames: tuple[int, ...] = ()


@dataclass(frozen=True)
class LossOutput:
    """What every ``Head.loss`` returns.

    Attributes:
        loss: scalar tensor, the loss SUMMED over the utterances of the batch (the infeasible
            ones, counted in ``metrics["num_infinite"]``, add 0).
        num_utterances: B, every utterance of the batch, the infeasible ones included: the one
            normaliser of every head (per-utterance logging, the trainer's gradient average).
        metrics: detached scalar values for logging (e.g. ``{"simple_loss": 3.2}``), also summed.
    """

    loss: Tensor
    num_utterances: int
    metrics: dict[str, float] = field(default_factory=dict)
