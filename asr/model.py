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

from asr.encoders.base import zero_padding
from asr.heads.aed import AEDConfig, AEDHead
from asr.heads.cif import CIFConfig, CIFHead
from asr.heads.ctc import CTCConfig, CTCHead
from asr.heads.transducer import TransducerConfig, TransducerHead
from asr.types import Batch, LossOutput

__all__ = ["ASRModel", "HEADS", "Head", "HeadSpec", "HeadsConfig", "ModelOutput", "build_heads",
           "check_a_head_trains"]


@runtime_checkable
class Head(Protocol):
    """What :class:`ASRModel` needs from a head."""

    def loss(
        self, enc: Tensor, enc_lens: Tensor, tokens: Tensor, token_lens: Tensor,
        step: int | None = None,
    ) -> LossOutput:
        """Loss summed over the batch (see :class:`asr.types.LossOutput`); ``step`` is the
        training step for heads whose loss has a schedule (None: the schedule's end)."""
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
        bad = {k: w for k, w in self.loss_weights.items() if not 0 <= w < math.inf}
        if bad:  # a negative weight trains its head to get worse, NaN ruins every step
            raise ValueError(f"heads.loss_weights must be >= 0 and finite, got {bad}")
        if self.cif is not None and self.cif.segments == "ctc" and self.ctc is None:
            raise ValueError("heads.cif.segments: ctc needs a ctc head (heads.ctc: {})")

    def check_training(self) -> None:
        """Checks what only training needs of the heads: a head that weighs > 0 (which
        :class:`ASRModel` needs too, but only once the tokenizer is read), and for a CIF head
        with ``segments: ctc`` a CTC head that trains, its paths being the CIF head's segments
        (a CTC weight of 0 left them random for the whole run). Reading the config does not
        check them, so that a model trained so is still rebuilt for decoding.

        Raises:
            ValueError: naming the fields.
        """
        weights = self.weights()
        if weights:  # no head at all is build_heads' error
            check_a_head_trains(weights)
        if self.cif is not None and self.cif.segments == "ctc" and weights["cif"] > 0:
            if weights["ctc"] == 0:
                raise ValueError(
                    "heads.cif.segments: ctc trains on the ctc head's paths, which "
                    "heads.loss_weights.ctc: 0 leaves untrained: give ctc a weight > 0"
                )

    def enabled(self) -> dict[str, Any]:
        """Head name -> its config, for every section that is set."""
        return {name: getattr(self, name) for name in HEADS if getattr(self, name) is not None}

    def weights(self) -> dict[str, float]:
        """Head name -> loss weight for every enabled head (1.0 unless given)."""
        return {name: float(self.loss_weights.get(name, 1.0)) for name in self.enabled()}


@dataclass(frozen=True)
class HeadSpec:
    """One row of the heads table.

    Attributes:
        builder: ``(config, enc_dim, vocab_size) -> head module``.
        kind: what the head's searchers need to know of it, from its config: the transducer
            head is ``rnnt`` (loss full or pruned) or ``tdt`` (loss tdt or pruned_tdt); the
            others are their name.
        link: ``(head, all heads) -> None``, run by :class:`ASRModel` for a head that uses
            another one (the CIF head's CTC segments); None for most.
    """

    builder: Callable[[Any, int, int], nn.Module]
    kind: Callable[[Any], str]
    link: Callable[[Any, Mapping[str, nn.Module]], None] | None = None


def _link_cif(head: CIFHead, heads: Mapping[str, nn.Module]) -> None:
    head.use_ctc(heads["ctc"] if "ctc" in heads else None)  # type: ignore[arg-type]


#: head name -> its row; the order is the heads' order everywhere (sections, searcher choice).
HEADS: dict[str, HeadSpec] = {
    "transducer": HeadSpec(TransducerHead, lambda c: "tdt" if c.is_tdt else "rnnt"),
    "ctc": HeadSpec(CTCHead, lambda c: "ctc"),
    "aed": HeadSpec(AEDHead, lambda c: "aed"),
    "cif": HeadSpec(CIFHead, lambda c: "cif", _link_cif),
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
        raise ValueError(f"heads: at least one of {sorted(HEADS)} must be configured")
    heads = {
        name: HEADS[name].builder(sub, enc_dim, vocab_size) for name, sub in cfg.enabled().items()
    }
    return heads, cfg.weights()


@dataclass(frozen=True)
class ModelOutput:
    """Result of :meth:`ASRModel.forward`: the trainer's contract (``loss``, ``num_utterances``,
    ``metrics``), as every head's :class:`asr.types.LossOutput`.

    Attributes:
        loss: scalar, ``sum_h weight_h * loss_h`` (each summed over utterances), float32, or
            float64 where a head's loss is (a float64 model).
        num_utterances: B.
        head_outputs: head name -> its LossOutput (heads with weight 0 are not run).
        metrics: ``{"loss": .., "<head>/loss": .., "<head>/<metric>": ..}`` (sums over
            utterances, detached).
    """

    loss: Tensor
    num_utterances: int
    head_outputs: dict[str, LossOutput]
    metrics: dict[str, float] = field(default_factory=dict)


def check_a_head_trains(loss_weights: Mapping[str, float]) -> None:
    """Checks that at least one head weighs > 0, else nothing would train: the one check behind
    :meth:`HeadsConfig.check_training` (``asr train`` exits 2 on it before reading data) and
    :class:`ASRModel` (for its direct users).

    Args:
        loss_weights: head name -> loss weight.

    Raises:
        ValueError: naming ``heads.loss_weights`` and the weights.
    """
    if not any(weight > 0 for weight in loss_weights.values()):
        raise ValueError("heads.loss_weights: at least one head must weigh > 0, got "
                         f"{dict(loss_weights)}")


def _check_weights(heads: Mapping[str, nn.Module], loss_weights: Mapping[str, float]) -> None:
    if set(heads) != set(loss_weights):
        raise ValueError(
            f"loss_weights names {sorted(loss_weights)} must match the heads {sorted(heads)}"
        )
    for name, weight in loss_weights.items():
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"loss weight of head '{name}' must be finite and >= 0, got {weight}")
    check_a_head_trains(loss_weights)
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
        for name, head in self.heads.items():
            link = HEADS[name].link if name in HEADS else None
            if link is not None:
                link(head, self.heads)

    @property
    def has_unused_parameters(self) -> bool:
        """Whether some trainable parameters take no part in the loss: those of heads of loss
        weight 0, which :meth:`forward` does not run. The trainer then has DDP find them at
        every step (``find_unused_parameters``), which it otherwise refuses."""
        return any(
            param.requires_grad
            for name, head in self.heads.items() if self.loss_weights[name] == 0
            for param in head.parameters()
        )

    def head_kinds(self, trained_only: bool = False) -> dict[str, str]:
        """Head name -> kind (:data:`HEADS`), in the heads' order; ``trained_only`` leaves out
        heads of loss weight 0 (kept for decoding, not trained)."""
        return {
            name: HEADS[name].kind(head.cfg) for name, head in self.heads.items()
            if not trained_only or self.loss_weights[name] > 0
        }

    def encode(
        self,
        feats: Tensor,
        feat_lens: Tensor,
        chunk_size: int | None = None,
        left_chunks: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(B, T, F), (B,) -> enc (B, T', D) zero beyond ``enc_lens``, enc_lens (B,).

        ``chunk_size`` / ``left_chunks`` encode under that chunk mask (the encoder's
        ``forward``; None: its own rule, in eval mode the config's ``encoder.chunk_size`` /
        ``encoder.left_chunks``, which ``asr decode --set`` changes).

        The padding is set to zero here (:func:`asr.encoders.base.zero_padding`), once for every
        head and offline searcher, whatever the encoder leaves there: none of them reads it, but
        ``0 * nan`` in a masked attention or a joiner's backward would carry padding garbage
        into a loss, a gradient or a search.
        """
        if chunk_size is None and left_chunks is None:  # any encoder module
            enc, enc_lens = self.encoder(feats, feat_lens)
        else:
            enc, enc_lens = self.encoder(feats, feat_lens, chunk_size=chunk_size,
                                         left_chunks=left_chunks)
        # Not redundant with the encoders' own zeroing (ChunkedEncoder ends with zero_padding
        # too): theirs is the encoder's contract for its users alone (the ONNX export graphs,
        # tests/encoders), this one the model's for ANY encoder module it is given, which the
        # searchers rely on (tests/test_model.py: non-finite encoder padding changes no search
        # fails without it). One masked_fill over (B, T', D): nothing next to the encoder.
        return zero_padding(enc, enc_lens), enc_lens

    def encode_chunk(
        self, feats: Tensor, feat_lens: Tensor, state: Any
    ) -> tuple[Tensor, Tensor, Any]:
        """Continues B streams: the encoder's ``forward_chunk`` (see
        :class:`asr.encoders.base.StreamingEncoder`), its frames zero beyond the counts as
        :meth:`encode`'s, for the streaming searchers.

        Args:
            feats: (B, T, F) each stream's next feature frames, padded beyond ``feat_lens``.
            feat_lens: (B,) new frames per stream (may differ, may be 0).
            state: the streams' stacked encoder state.

        Returns:
            (B, T', D) new encoder frames zero beyond the counts, (B,) counts, the new state.
        """
        enc, enc_lens, state = self.encoder.forward_chunk(feats, feat_lens, state)
        return zero_padding(enc, enc_lens), enc_lens, state

    def forward(
        self,
        batch_or_feats: Batch | Tensor,
        feat_lens: Tensor | None = None,
        tokens: Tensor | None = None,
        token_lens: Tensor | None = None,
        *,
        step: int | None = None,
    ) -> ModelOutput:
        """Encodes once and sums the weighted head losses.

        Args:
            batch_or_feats: a :class:`asr.types.Batch`, or feats (B, T, F) with the other
                three tensors given.
            feat_lens: (B,) valid frames.
            tokens: (B, U) target ids, padded with 0.
            token_lens: (B,) number of tokens.
            step: the training step, for heads whose loss has a schedule (the pruned
                transducer's warm-up, the transducer's delay-penalty start); None: the
                schedule's end.
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
            outputs[name] = head.loss(enc, enc_lens, tokens, token_lens, step=step)
            loss = outputs[name].loss
            total = total + weight * loss.to(torch.promote_types(loss.dtype, total.dtype))
        metrics = {"loss": float(total.detach())}
        for name, output in outputs.items():
            metrics[f"{name}/loss"] = float(output.loss.detach())
            metrics.update({f"{name}/{key}": value for key, value in output.metrics.items()})
        return ModelOutput(total, feats.shape[0], outputs, metrics)
