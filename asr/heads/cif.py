"""CIF head: continuous integrate-and-fire + a non-autoregressive decoder (Paraformer style).

Dong & Xu 2020, "CIF: Continuous Integrate-and-Fire for End-to-End Speech Recognition";
Gao et al. 2022, "Paraformer: Fast and Accurate Parallel Transformer for Non-autoregressive
End-to-End Speech Recognition" (predictor, glancing sampler); Qian et al. 2021, "Glancing
Transformer for Non-Autoregressive Neural Machine Translation" (glancing).

A weight predictor gives every encoder frame a weight ``alpha_t`` in (0, 1). Integrate-and-fire
accumulates the weights and emits ("fires") one token embedding each time the accumulated weight
crosses the threshold; the embedding is the alpha-weighted sum of the frames integrated for it.
During training the weights are rescaled to sum to the target length U (so it fires exactly U
times) and a quantity loss ``|sum(alpha) - U|`` teaches the predictor to count. A Transformer
decoder without causal mask (cross-attention to the encoder output) turns the fired embeddings
into token logits, trained with label-smoothed cross-entropy, optionally with glancing
sampling (a first pass; then some decoder inputs are replaced by reference embeddings, as many
as ``glancing_ratio`` times the first pass's errors).

Shape legend: B batch, T frames, N fired tokens, U target tokens, D encoder dims, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from asr.encoders.dropout import Dropout
from asr.heads.decoder_layers import DecoderLayer, lengths_to_mask, sinusoidal_positions
from asr.losses.cif import quantity_loss, scale_alphas
from asr.losses.label_smoothing import label_smoothing_loss
from asr.types import LossOutput

__all__ = ["CIFConfig", "CIFHead", "CIFInference", "cif", "cif_fire_frames", "cif_num_fires"]


def cif_num_fires(alphas: Tensor, threshold: float = 1.0) -> Tensor:
    """Number of tokens :func:`cif` fires: ``floor(S / threshold)`` plus 1 if the remainder
    exceeds ``threshold / 2`` (S = sum of ``alphas`` per row), i.e. ``round(S / threshold)``
    with exact halves rounded down.

    Args:
        alphas: (B, T) non-negative weights.

    Returns:
        (B,) int64 counts.
    """
    total = alphas.detach().sum(dim=1) / threshold
    full = total.floor()
    return (full + (total - full > 0.5).to(full.dtype)).long()


def cif(
    hidden: Tensor, alphas: Tensor, threshold: float = 1.0, num_fired: int | None = None
) -> tuple[Tensor, Tensor]:
    """Continuous integrate-and-fire, vectorised over batch, frames and tokens (no loop).

    With the cumulative weight ``c_t = alpha_0 + ... + alpha_t`` (and ``c_{-1} = 0``), token
    ``k`` integrates the slice ``[k, k + 1) * threshold`` of the cumulative weight, so frame t
    contributes to it with weight ``|[c_{t-1}, c_t] ∩ [k, k + 1) * threshold|``. This equals the
    sequential accumulate / fire / carry-the-remainder loop of the paper, including frames whose
    weight exceeds the threshold (they fire several tokens). Tail: the last, incomplete token is
    fired with its partial (unscaled) weight when that exceeds ``threshold / 2`` and dropped
    otherwise, so the count is :func:`cif_num_fires` = round(sum(alphas) / threshold).

    Memory is O(B * N * T) for the weight matrix. The integration runs in float32 (float64 if
    ``alphas`` are float64), also under autocast: counts come from a cumulative sum.

    Args:
        hidden: (B, T, D) frames to integrate.
        alphas: (B, T) non-negative weights, zero beyond each utterance's frames.
        threshold: firing threshold (1.0 in the papers).
        num_fired: N of the output; default the largest count in the batch (a host sync).
            Tokens beyond it are dropped and ``fired_lens`` clamped to it.

    Returns:
        fired: (B, N, D) token embeddings (float32, or float64), zero beyond ``fired_lens``.
        fired_lens: (B,) int64 number of fired tokens.
    """
    if hidden.dim() != 3 or alphas.shape != hidden.shape[:2]:
        raise ValueError(
            f"cif expects hidden (B, T, D) and alphas (B, T), got {tuple(hidden.shape)} and "
            f"{tuple(alphas.shape)}"
        )
    weights_dtype = alphas.dtype if alphas.dtype == torch.float64 else torch.float32
    alphas = alphas.to(weights_dtype)
    fired_lens = cif_num_fires(alphas, threshold)
    if num_fired is None:
        num_fired = int(fired_lens.max().item()) if fired_lens.numel() else 0
    fired_lens = fired_lens.clamp(max=num_fired)
    cumulative = alphas.cumsum(dim=1)
    previous = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], dim=1)
    lower = torch.arange(num_fired, device=alphas.device, dtype=weights_dtype) * threshold
    lower = lower.view(1, -1, 1)
    overlap = torch.minimum(cumulative.unsqueeze(1), lower + threshold) - torch.maximum(
        previous.unsqueeze(1), lower
    )
    weights = overlap.clamp(min=0.0)  # (B, N, T)
    keep = lengths_to_mask(fired_lens, num_fired).unsqueeze(-1)
    weights = weights * keep
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        fired = torch.bmm(weights, hidden.to(weights_dtype))
    return fired, fired_lens


def cif_fire_frames(alphas: Tensor, fired_lens: Tensor, threshold: float = 1.0) -> Tensor:
    """The frame at which :func:`cif` fires each token (its timestamp).

    Token ``k`` fires at the first frame whose cumulative weight reaches ``(k + 1) *
    threshold``; the last, partial token (fired by the tail rule) at the last frame with a
    non-zero weight.

    Args:
        alphas: (B, T) non-negative weights, zero beyond each utterance's frames.
        fired_lens: (B,) tokens fired per utterance (:func:`cif_num_fires`, possibly clamped).
        threshold: firing threshold.

    Returns:
        (B, N) int64 frame indices, N = ``max(fired_lens)``, non-decreasing along each row
        and 0 beyond ``fired_lens``.
    """
    num_fired = int(fired_lens.max().item()) if fired_lens.numel() else 0
    weights_dtype = alphas.dtype if alphas.dtype == torch.float64 else torch.float32
    cumulative = alphas.detach().to(weights_dtype).cumsum(dim=1).contiguous()
    targets = torch.arange(1, num_fired + 1, device=alphas.device, dtype=weights_dtype)
    targets = (targets * threshold).expand(alphas.shape[0], num_fired).contiguous()
    frames = torch.searchsorted(cumulative, targets)  # first t with cumulative[t] >= target
    last = (alphas > 0).long().cumsum(dim=1).argmax(dim=1, keepdim=True)  # last weighted frame
    frames = torch.minimum(frames, last)
    return frames * lengths_to_mask(fired_lens, num_fired)


@dataclass(frozen=True)
class CIFInference:
    """What :meth:`CIFHead.infer` returns.

    Attributes:
        logits: (B, N, V) decoder logits of the fired tokens.
        token_lens: (B,) int64 tokens fired per utterance.
        fire_frames: (B, N) int64 encoder frame at which each token fired.
    """

    logits: Tensor
    token_lens: Tensor
    fire_frames: Tensor


@dataclass(frozen=True)
class CIFConfig:
    """Configuration of :class:`CIFHead`.

    Attributes:
        d_model: decoder dimension (fired embeddings and encoder output are projected to it).
        num_heads: decoder attention heads.
        num_layers: decoder layers.
        ffn_dim: decoder feed-forward size.
        dropout: decoder dropout.
        predictor_kernel: odd kernel of the predictor's depthwise convolution.
        predictor_dropout: dropout before the predictor's output layer.
        threshold: firing threshold.
        label_smoothing: of the decoder cross-entropy.
        quantity_weight: weight of the quantity loss.
        glancing_ratio: fraction of the first pass's errors replaced by reference embeddings;
            0 disables the glancing sampler (and the extra pass).
    """

    d_model: int = 256
    num_heads: int = 4
    num_layers: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.1
    predictor_kernel: int = 3
    predictor_dropout: float = 0.1
    threshold: float = 1.0
    label_smoothing: float = 0.1
    quantity_weight: float = 1.0
    glancing_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.predictor_kernel < 1 or self.predictor_kernel % 2 == 0:
            raise ValueError(f"predictor_kernel must be odd and >= 1, got {self.predictor_kernel}")
        if self.threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if not 0.0 <= self.glancing_ratio <= 1.0:
            raise ValueError(f"glancing_ratio must be in [0, 1], got {self.glancing_ratio}")


class CIFPredictor(nn.Module):
    """Per-frame weights: depthwise conv (+ residual) -> ReLU -> dropout -> linear -> sigmoid."""

    def __init__(self, enc_dim: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(enc_dim, enc_dim, kernel, padding=kernel // 2, groups=enc_dim)
        self.dropout = Dropout(dropout)
        self.output = nn.Linear(enc_dim, 1)

    def forward(self, enc: Tensor, enc_mask: Tensor) -> Tensor:
        """(B, T, D), (B, T) bool -> (B, T) weights in (0, 1), zero on padding."""
        x = enc * enc_mask.unsqueeze(-1)  # padding must not leak through the convolution
        x = torch.relu(self.conv(x.transpose(1, 2)).transpose(1, 2) + x)
        logits = self.output(self.dropout(x)).squeeze(-1)
        # float32 under autocast (counts come from sums of weights); a float64 model keeps float64.
        alphas = torch.sigmoid(logits if logits.dtype == torch.float64 else logits.float())
        return alphas * enc_mask


class CIFHead(nn.Module):
    """Weight predictor + integrate-and-fire + non-autoregressive Transformer decoder.

    Args:
        cfg: head configuration.
        enc_dim: encoder output dimension D.
        vocab_size: V, including blank (0; never a target).
    """

    def __init__(self, cfg: CIFConfig, enc_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.predictor = CIFPredictor(enc_dim, cfg.predictor_kernel, cfg.predictor_dropout)
        self.input_proj = nn.Linear(enc_dim, cfg.d_model)
        self.memory_proj = (
            nn.Linear(enc_dim, cfg.d_model) if enc_dim != cfg.d_model else nn.Identity()
        )
        self.layers = nn.ModuleList(
            DecoderLayer(cfg.d_model, cfg.num_heads, cfg.ffn_dim, cfg.dropout)
            for _ in range(cfg.num_layers)
        )
        self.final_norm = nn.LayerNorm(cfg.d_model)
        self.output = nn.Linear(cfg.d_model, vocab_size)
        self.target_embed = (
            nn.Embedding(vocab_size, cfg.d_model) if cfg.glancing_ratio > 0 else None
        )

    def predict_alphas(self, enc: Tensor, enc_lens: Tensor) -> Tensor:
        """(B, T, D), (B,) -> (B, T) float32 firing weights (float64 in a float64 model), zero
        beyond ``enc_lens``."""
        return self.predictor(enc, lengths_to_mask(enc_lens, enc.shape[1]))

    def decode(self, inputs: Tensor, input_lens: Tensor, enc: Tensor, enc_lens: Tensor) -> Tensor:
        """Non-autoregressive decoder: (B, N, d_model) inputs -> (B, N, V) logits."""
        memory = self.memory_proj(enc)
        memory_mask = lengths_to_mask(enc_lens, enc.shape[1])
        self_mask = lengths_to_mask(input_lens, inputs.shape[1]).unsqueeze(1)
        positions = sinusoidal_positions(
            inputs.shape[1], self.cfg.d_model, 0, inputs.device, inputs.dtype
        )
        x = inputs + positions
        for layer in self.layers:
            x, _, _ = layer(x, memory, memory_mask, self_mask=self_mask)
        return self.output(self.final_norm(x))

    def forward(self, enc: Tensor, enc_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Inference pass (see :meth:`infer`) without the fire frames.

        Returns:
            logits: (B, N, V); token_lens: (B,) number of fired tokens per utterance.
        """
        out = self.infer(enc, enc_lens)
        return out.logits, out.token_lens

    def infer(self, enc: Tensor, enc_lens: Tensor) -> CIFInference:
        """Predicted weights, fire (the count is learnt, no target length), decode.

        Args:
            enc: (B, T, D) encoder output; enc_lens: (B,) valid frames.
        """
        alphas = self.predict_alphas(enc, enc_lens)
        fired, fired_lens = cif(enc, alphas, self.cfg.threshold)
        logits = self.decode(self.input_proj(fired), fired_lens, enc, enc_lens)
        frames = cif_fire_frames(alphas, fired_lens, self.cfg.threshold)
        return CIFInference(logits, fired_lens, frames)

    def _glance(
        self, inputs: Tensor, tokens: Tensor, token_lens: Tensor, enc: Tensor, enc_lens: Tensor
    ) -> tuple[Tensor, int]:
        """Replaces ``floor(ratio * errors)`` random inputs per row by reference embeddings."""
        assert self.target_embed is not None
        valid = lengths_to_mask(token_lens, tokens.shape[1])
        with torch.no_grad():
            predicted = self.decode(inputs, token_lens, enc, enc_lens).argmax(dim=-1)
            errors = ((predicted != tokens) & valid).sum(dim=1)
            num_glanced = (errors.float() * self.cfg.glancing_ratio).floor().long()
            scores = torch.rand(tokens.shape, device=tokens.device).masked_fill(~valid, 2.0)
            ranks = scores.argsort(dim=1).argsort(dim=1)
            glanced = ranks < num_glanced.unsqueeze(1)
        reference = self.target_embed(tokens.long()).to(inputs.dtype)
        inputs = torch.where(glanced.unsqueeze(-1), reference, inputs)
        return inputs, int(glanced.sum())

    def loss(
        self, enc: Tensor, enc_lens: Tensor, tokens: Tensor, token_lens: Tensor,
        step: int | None = None,
    ) -> LossOutput:
        """Decoder cross-entropy (label smoothed) + ``quantity_weight`` * quantity loss, summed.

        Args:
            enc: (B, T, D) encoder output.
            enc_lens: (B,) valid frames.
            tokens: (B, U) target ids, padded with 0 beyond ``token_lens``.
            token_lens: (B,) number of target tokens.

        Returns:
            LossOutput; metrics ``ce_loss``, ``quantity_loss``, ``num_correct``, ``num_tokens``
            and, with glancing, ``num_glanced``.
        """
        cfg = self.cfg
        alphas = self.predict_alphas(enc, enc_lens)
        quantity = quantity_loss(alphas / cfg.threshold, token_lens).sum()
        scaled = scale_alphas(alphas, token_lens) * cfg.threshold
        fired, _ = cif(enc, scaled, cfg.threshold, num_fired=tokens.shape[1])
        inputs = self.input_proj(fired)
        metrics: dict[str, float] = {}
        if self.target_embed is not None and self.training:
            inputs, num_glanced = self._glance(inputs, tokens, token_lens, enc, enc_lens)
            metrics["num_glanced"] = float(num_glanced)
        logits = self.decode(inputs, token_lens, enc, enc_lens)
        valid = lengths_to_mask(token_lens, tokens.shape[1])
        ce = (label_smoothing_loss(logits, tokens, cfg.label_smoothing) * valid).sum()
        loss = ce + cfg.quantity_weight * quantity
        metrics.update(
            ce_loss=float(ce.detach()),
            quantity_loss=float(quantity.detach()),
            num_correct=float(((logits.argmax(dim=-1) == tokens) & valid).sum()),
            num_tokens=float(token_lens.sum()),
        )
        return LossOutput(loss=loss, num_utterances=enc.shape[0], metrics=metrics)
