"""ASRModel: one encoder, several heads (CTC, transducer, AED, CIF), a weighted sum of losses.

Multi-task training of several decoders on one shared encoder follows Kim et al. 2017, "Joint
CTC-Attention based End-to-End Speech Recognition using Multi-task Learning" (CTC + attention);
any subset of heads can be combined the same way.

Heads are built from :class:`HeadsConfig` by :func:`build_heads` (one optional section per head
kind plus ``loss_weights``), so wiring a YAML experiment is
``ASRModel(encoder, *build_heads(cfg.heads, encoder_dim, vocab_size))``.

Shape legend: B batch, T frames, F feature bins, U tokens, D encoder dims.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from asr.heads.aed import AEDConfig, AEDHead
from asr.heads.cif import CIFConfig, CIFHead
from asr.heads.ctc import CTCConfig, CTCHead
from asr.heads.transducer import TransducerConfig, TransducerHead
from asr.types import Batch, LossOutput

__all__ = ["ASRModel", "HEAD_BUILDERS", "Head", "HeadsConfig", "ModelOutput", "build_heads"]


@runtime_checkable
class Head(Protocol):
    """What :class:`ASRModel` needs from a head."""

    def loss(self, enc: Tensor, enc_lens: Tensor, tokens: Tensor, token_lens: Tensor) -> LossOutput:
        """Loss summed over the batch; see :class:`asr.types.LossOutput`."""
        ...


@dataclass(frozen=True)
class HeadsConfig:
    """Which heads sit on the encoder, and their loss weights.

    Attributes:
        transducer: transducer (RNN-T / pruned RNN-T / TDT) section, or null for none.
        ctc: CTC head section, or null for none.
        aed: attention decoder section, or null for none.
        cif: CIF / Paraformer section, or null for none.
        loss_weights: head name -> weight; a configured head missing here weighs 1.0.
    """

    transducer: TransducerConfig | None = None
    ctc: CTCConfig | None = None
    aed: AEDConfig | None = None
    cif: CIFConfig | None = None
    loss_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        enabled = self.enabled()
        unknown = sorted(set(self.loss_weights) - set(enabled))
        if unknown:
            raise ValueError(
                f"heads.loss_weights names {unknown}, which are not configured heads "
                f"(configured: {sorted(enabled)})"
            )

    def enabled(self) -> dict[str, Any]:
        """Head name -> its config, for every section that is set."""
        names = [name for name in HEAD_BUILDERS if hasattr(self, name)]
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def weights(self) -> dict[str, float]:
        """Head name -> loss weight for every enabled head (1.0 unless given)."""
        return {name: float(self.loss_weights.get(name, 1.0)) for name in self.enabled()}


#: head name -> constructor ``(config, enc_dim, vocab_size) -> nn.Module``.
HEAD_BUILDERS: dict[str, Callable[[Any, int, int], nn.Module]] = {
    "transducer": TransducerHead,
    "ctc": CTCHead,
    "aed": AEDHead,
    "cif": CIFHead,
}


def build_heads(
    cfg: HeadsConfig, enc_dim: int, vocab_size: int
) -> tuple[dict[str, nn.Module], dict[str, float]]:
    """Builds the configured heads and returns them with their loss weights.

    Args:
        cfg: heads section of an experiment config.
        enc_dim: encoder output dimension D.
        vocab_size: vocabulary size including blank.

    Returns:
        (heads, loss_weights), ready for :class:`ASRModel`.

    Raises:
        ValueError: if no head section is set.
    """
    if not cfg.enabled():
        raise ValueError(f"heads: at least one of {sorted(HEAD_BUILDERS)} must be configured")
    heads = {
        name: HEAD_BUILDERS[name](sub, enc_dim, vocab_size) for name, sub in cfg.enabled().items()
    }
    return heads, cfg.weights()


@dataclass(frozen=True)
class ModelOutput:
    """Result of :meth:`ASRModel.forward`.

    Attributes:
        loss: scalar, ``sum_h weight_h * loss_h`` (each summed over utterances).
        num_utterances: B.
        head_outputs: head name -> its LossOutput (heads with weight 0 are not run).
    """

    loss: Tensor
    num_utterances: int
    head_outputs: dict[str, LossOutput]

    def metrics(self) -> dict[str, float]:
        """Flat ``{"loss": .., "<head>/loss": .., "<head>/<metric>": ..}`` (sums over utterances)."""
        result = {"loss": float(self.loss.detach())}
        for name, output in self.head_outputs.items():
            result[f"{name}/loss"] = float(output.loss.detach())
            result.update({f"{name}/{key}": value for key, value in output.metrics.items()})
        return result


def _check_weights(heads: Mapping[str, nn.Module], loss_weights: Mapping[str, float]) -> None:
    if set(heads) != set(loss_weights):
        raise ValueError(
            f"loss_weights names {sorted(loss_weights)} must match the heads {sorted(heads)}"
        )
    for name, weight in loss_weights.items():
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"loss weight of head '{name}' must be finite and >= 0, got {weight}")
    if not any(weight > 0 for weight in loss_weights.values()):
        raise ValueError(f"at least one loss weight must be > 0, got {dict(loss_weights)}")
    for name, head in heads.items():
        if not isinstance(head, Head):
            raise TypeError(f"head '{name}' ({type(head).__name__}) has no loss() method")


class ASRModel(nn.Module):
    """An encoder shared by several heads, trained on the weighted sum of their losses.

    Args:
        encoder: ``forward(feats (B, T, F), feat_lens (B,)) -> (enc (B, T', D), enc_lens (B,))``.
        heads: name -> head implementing :class:`Head`.
        loss_weights: name -> non-negative weight (same names as ``heads``, one > 0). Heads of
            weight 0 are kept (e.g. for decoding) but their loss is not computed.
    """

    def __init__(
        self, encoder: nn.Module, heads: Mapping[str, nn.Module], loss_weights: Mapping[str, float]
    ) -> None:
        super().__init__()
        _check_weights(heads, loss_weights)
        self.encoder = encoder
        self.heads = nn.ModuleDict(dict(heads))
        self.loss_weights = {name: float(loss_weights[name]) for name in heads}

    def set_step(self, step: int) -> None:
        """Passes the training step to every head with a step-driven schedule (the trainer calls
        this before each batch; e.g. the pruned transducer loss warm-up)."""
        for head in self.heads.values():
            set_step = getattr(head, "set_step", None)
            if callable(set_step):
                set_step(step)

    def encode(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, F), (B,) -> enc (B, T', D), enc_lens (B,)."""
        return self.encoder(feats, feat_lens)

    def forward(
        self,
        batch_or_feats: Batch | Tensor,
        feat_lens: Tensor | None = None,
        tokens: Tensor | None = None,
        token_lens: Tensor | None = None,
    ) -> ModelOutput:
        """Encodes once and sums the weighted head losses.

        Args:
            batch_or_feats: a :class:`asr.types.Batch`, or feats (B, T, F) with the other
                three tensors given.
            feat_lens: (B,) valid frames.
            tokens: (B, U) target ids, padded with 0.
            token_lens: (B,) number of tokens.
        """
        if isinstance(batch_or_feats, Batch):
            feats, feat_lens = batch_or_feats.feats, batch_or_feats.feat_lens
            tokens, token_lens = batch_or_feats.tokens, batch_or_feats.token_lens
        else:
            feats = batch_or_feats
            if feat_lens is None or tokens is None or token_lens is None:
                raise ValueError("forward(feats, ...) needs feat_lens, tokens and token_lens")
        enc, enc_lens = self.encode(feats, feat_lens)
        total = torch.zeros((), device=enc.device, dtype=torch.float32)
        outputs: dict[str, LossOutput] = {}
        for name, head in self.heads.items():
            weight = self.loss_weights[name]
            if weight == 0:
                continue
            outputs[name] = head.loss(enc, enc_lens, tokens, token_lens)
            total = total + weight * outputs[name].loss.float()
        return ModelOutput(loss=total, num_utterances=feats.shape[0], head_outputs=outputs)
