"""CIF head: continuous integrate-and-fire + a non-autoregressive decoder (Paraformer style).

Dong & Xu 2020, "CIF: Continuous Integrate-and-Fire for End-to-End Speech Recognition";
Gao et al. 2022, "Paraformer: Fast and Accurate Parallel Transformer for Non-autoregressive
End-to-End Speech Recognition" (predictor, glancing sampler); Qian et al. 2021, "Glancing
Transformer for Non-Autoregressive Neural Machine Translation" (glancing); An et al. 2024,
"Paraformer-v2: An improved non-autoregressive transformer for noise-robust speech
recognition" (arXiv:2409.17746; token embeddings from CTC segments).

A weight predictor gives every encoder frame a weight ``alpha_t`` in (0, 1). Integrate-and-fire
accumulates the weights and emits ("fires") one token embedding each time the accumulated weight
crosses the threshold; the embedding is the alpha-weighted sum of the frames integrated for it.
During training the weights are rescaled to sum to the target length U (so it fires exactly U
times) and a quantity loss ``|sum(alpha) - U|`` teaches the predictor to count. A Transformer
decoder without causal mask (cross-attention to the encoder output) turns the fired embeddings
into token logits, trained with label-smoothed cross-entropy, optionally with glancing
sampling (a first pass; then some decoder inputs are replaced by reference embeddings, as many
as ``glancing_ratio`` times the first pass's errors; only while training, and the accuracy it
reports is the first pass's, whose inputs hold no reference token).

Two switches of :class:`CIFConfig`:

* ``end_slot``: the targets end with ``end_id`` (``<sos/eos>``), so the weights learn to sum
  to U + 1 and the decoder learns to close the sentence; a search stops at the first position
  whose label is ``end_id``, so one fire too many is absorbed (FunASR's ``predictor_bias``,
  WeNet's ``add_eos``).
* ``segments: ctc`` (Paraformer-v2): no weight predictor; the token embeddings are the mean
  encoder frames of each token's CTC segment, taken from the model's CTC head (linked by
  :class:`asr.model.ASRModel`). Training uses the Viterbi alignment of the reference
  (:func:`asr.losses.ctc.ctc_forced_align`), inference the greedy CTC path, so the count is
  exactly greedy CTC's; both read the CTC head's eval-mode output (no dropout, no gradient:
  the segments do not depend on a dropout draw). A segment is the run of frames on which the
  path emits the token (its blank frames belong to no token). The paper averages CTC
  posteriors; the encoder frames carry them (the CTC head is linear on them) and more.

Shape legend: B batch, T frames, N fired tokens, U target tokens, D encoder dims, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from asr.encoders.base import zero_padding
from asr.encoders.dropout import Dropout
from asr.heads.ctc import CTCHead
from asr.heads.decoder_layers import (
    DecoderLayer,
    check_sinusoidal_dim,
    lengths_to_mask,
    pad_sequences,
    per_hypothesis,
    sinusoidal_positions,
    trained_utterances,
)
from asr.losses.cif import quantity_loss, scale_alphas
from asr.losses.ctc import ctc_forced_align
from asr.losses.label_smoothing import check_label_smoothing, label_smoothing_loss
from asr.losses.pruned_rnnt import blank_padded_tokens
from asr.types import LossOutput

__all__ = [
    "CIFConfig",
    "CIFHead",
    "CIFInference",
    "CtcSegments",
    "cif",
    "cif_fire_frames",
    "cif_num_fires",
    "ctc_greedy_segments",
    "segment_means",
]


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
    if alphas.shape[1] == 0:  # no frames: nothing fired
        return fired_lens.new_zeros(alphas.shape[0], num_fired)
    weights_dtype = alphas.dtype if alphas.dtype == torch.float64 else torch.float32
    cumulative = alphas.detach().to(weights_dtype).cumsum(dim=1).contiguous()
    targets = torch.arange(1, num_fired + 1, device=alphas.device, dtype=weights_dtype)
    targets = (targets * threshold).expand(alphas.shape[0], num_fired).contiguous()
    frames = torch.searchsorted(cumulative, targets)  # first t with cumulative[t] >= target
    last = (alphas > 0).long().cumsum(dim=1).argmax(dim=1, keepdim=True)  # last weighted frame
    frames = torch.minimum(frames, last)
    return frames * lengths_to_mask(fired_lens, num_fired)


def segment_means(hidden: Tensor, segment_ids: Tensor, num_segments: int) -> Tensor:
    """Mean of the frames of each segment.

    Args:
        hidden: (B, T, D) frames.
        segment_ids: (B, T) int64 segment of each frame in [0, N), -1 for frames of none.
        num_segments: N.

    Returns:
        (B, N, D) means (float32, or float64 for float64 ``hidden``); zero for a segment
        without frames.
    """
    weights_dtype = hidden.dtype if hidden.dtype == torch.float64 else torch.float32
    index = torch.arange(num_segments, device=hidden.device)
    weights = (segment_ids[:, None, :] == index[None, :, None]).to(weights_dtype)  # (B, N, T)
    weights = weights / weights.sum(dim=2, keepdim=True).clamp(min=1.0)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        return torch.bmm(weights, hidden.to(weights_dtype))


@dataclass(frozen=True)
class CtcSegments:
    """The tokens of greedy CTC paths and the frames of each (:func:`ctc_greedy_segments`).

    Attributes:
        segment_ids: (B, T) int64 token index of each frame, -1 on blank and padding frames.
        tokens: (B, N) int64 token ids, 0 beyond ``token_lens``.
        token_lens: (B,) int64 tokens per utterance.
        first_frames: (B, N) int64 first frame of each token's run (its timestamp), 0 beyond.
    """

    segment_ids: Tensor
    tokens: Tensor
    token_lens: Tensor
    first_frames: Tensor


def ctc_greedy_segments(labels: Tensor, lens: Tensor, blank_id: int = 0) -> CtcSegments:
    """Greedy CTC path -> its tokens and their segments (no loop).

    A token starts on a non-blank frame whose label differs from the previous frame's; its
    segment is the run of frames with that label.

    Args:
        labels: (B, T) int64 best label of every frame.
        lens: (B,) valid frames.
    """
    batch, frames = labels.shape
    valid = lengths_to_mask(lens.to(labels.device), frames)
    previous = torch.cat([torch.full_like(labels[:, :1], blank_id), labels[:, :-1]], dim=1)
    emitting = valid & (labels != blank_id)
    start = emitting & (labels != previous)
    index = start.long().cumsum(dim=1) - 1
    segment_ids = torch.where(emitting, index, -1)
    token_lens = start.sum(dim=1)
    width = int(token_lens.max()) if batch else 0
    rows = torch.arange(batch, device=labels.device)[:, None].expand_as(labels)
    tokens = labels.new_zeros(batch, width)
    tokens[rows[start], index[start]] = labels[start]
    first_frames = labels.new_zeros(batch, width)
    times = torch.arange(frames, device=labels.device)[None, :].expand_as(labels)
    first_frames[rows[start], index[start]] = times[start]
    return CtcSegments(segment_ids, tokens, token_lens, first_frames)


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
        d_model: decoder dimension (fired embeddings and encoder output are projected to it);
            even (the decoder's sinusoidal positions).
        num_heads: decoder attention heads.
        num_layers: decoder layers.
        ffn_dim: decoder feed-forward size.
        dropout: decoder dropout.
        predictor_kernel: odd kernel of the predictor's depthwise convolution.
        predictor_dropout: dropout before the predictor's output layer.
        threshold: firing threshold.
        label_smoothing: of the decoder cross-entropy, in ``[0, 1)``.
        quantity_weight: weight of the quantity loss (>= 0).
        glancing_ratio: fraction of the first pass's errors replaced by reference embeddings;
            0 disables the glancing sampler (and the extra pass).
        segments: ``cif``: token embeddings by integrate-and-fire of predicted weights;
            ``ctc``: mean encoder frames of the CTC segments of each token (needs a ``ctc``
            head in the model; no weight predictor, no quantity loss).
        end_slot: train U + 1 positions, the last labelled ``end_id``; searches stop at it
            (``segments: cif`` only: the CTC count is not learnt by this head).
        end_id: the end label (``<sos/eos>`` = 1 with our tokenizers; 0 is blank).
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
    segments: Literal["cif", "ctc"] = "cif"
    end_slot: bool = False
    end_id: int = 1

    def __post_init__(self) -> None:
        if self.predictor_kernel < 1 or self.predictor_kernel % 2 == 0:
            raise ValueError(f"predictor_kernel must be odd and >= 1, got {self.predictor_kernel}")
        if self.threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if not 0.0 <= self.glancing_ratio <= 1.0:
            raise ValueError(f"glancing_ratio must be in [0, 1], got {self.glancing_ratio}")
        if self.segments not in ("cif", "ctc"):
            raise ValueError(f"segments must be 'cif' or 'ctc', got {self.segments!r}")
        if self.end_slot and self.segments == "ctc":
            raise ValueError("end_slot needs segments: cif (CTC segments fix the count)")
        if self.end_id < 1:
            raise ValueError(f"end_id must be >= 1 (0 is blank), got {self.end_id}")
        if not 0.0 <= self.quantity_weight < math.inf:  # < 0 trains the weights to miscount
            raise ValueError(f"quantity_weight must be >= 0 and finite, got {self.quantity_weight}")
        # refused here, not at the first training step (after the data and CMVN are read)
        check_label_smoothing(self.label_smoothing, "label_smoothing")
        check_sinusoidal_dim(self.d_model, "d_model")  # the decoder's positions


class CIFPredictor(nn.Module):
    """Per-frame weights: depthwise conv (+ residual) -> ReLU -> dropout -> linear -> sigmoid."""

    def __init__(self, enc_dim: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(enc_dim, enc_dim, kernel, padding=kernel // 2, groups=enc_dim)
        self.dropout = Dropout(dropout)
        self.output = nn.Linear(enc_dim, 1)

    def forward(self, enc: Tensor, enc_mask: Tensor) -> Tensor:
        """(B, T, D), (B, T) bool -> (B, T) weights in (0, 1), zero on padding."""
        if enc.shape[1] == 0:  # the convolution needs a frame; nothing fires
            dtype = torch.float64 if enc.dtype == torch.float64 else torch.float32
            return enc.new_zeros(enc.shape[:2], dtype=dtype)
        x = enc * enc_mask.unsqueeze(-1)  # padding must not leak through the convolution
        x = torch.relu(self.conv(x.transpose(1, 2)).transpose(1, 2) + x)
        logits = self.output(self.dropout(x)).squeeze(-1)
        # float32 under autocast (counts come from sums of weights); a float64 model keeps float64.
        alphas = torch.sigmoid(logits if logits.dtype == torch.float64 else logits.float())
        return alphas * enc_mask


class CIFHead(nn.Module):
    """Token embeddings (integrate-and-fire, or CTC segments) + non-autoregressive decoder.

    Args:
        cfg: head configuration.
        enc_dim: encoder output dimension D.
        vocab_size: V, including blank (0; never a target).
    """

    def __init__(self, cfg: CIFConfig, enc_dim: int, vocab_size: int) -> None:
        super().__init__()
        if cfg.end_slot and not cfg.end_id < vocab_size:
            raise ValueError(f"end_id={cfg.end_id} is outside the vocabulary of {vocab_size}")
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.predictor = (
            CIFPredictor(enc_dim, cfg.predictor_kernel, cfg.predictor_dropout)
            if cfg.segments == "cif"
            else None
        )
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
        # the model's CTC head (segments: ctc); a plain tuple, so that its weights stay the CTC
        # head's own and are not registered (saved) twice
        self._ctc: tuple[CTCHead, ...] = ()

    @property
    def end_id(self) -> int | None:
        """The label that ends a hypothesis (``cfg.end_id`` with an end slot), else None."""
        return self.cfg.end_id if self.cfg.end_slot else None

    @property
    def uses_ctc(self) -> bool:
        """Whether the token segments come from a CTC head (``segments: ctc``)."""
        return self.cfg.segments == "ctc"

    def use_ctc(self, ctc: CTCHead | None) -> None:
        """Links the CTC head whose paths segment the tokens (``segments: ctc``).

        Raises:
            ValueError: if ``segments: ctc`` and ``ctc`` is None, or its vocabulary differs.
        """
        if not self.uses_ctc:
            return
        if ctc is None:
            raise ValueError("heads.cif.segments: ctc needs a 'ctc' head in the model")
        if ctc.vocab_size != self.vocab_size:
            raise ValueError(
                f"CTC head vocabulary {ctc.vocab_size} differs from the CIF head's "
                f"{self.vocab_size}"
            )
        self._ctc = (ctc,)

    def _ctc_head(self) -> CTCHead:
        if not self._ctc:
            raise RuntimeError(
                "this CIF head (segments: ctc) has no CTC head; ASRModel links it, or call "
                "use_ctc(ctc_head)"
            )
        return self._ctc[0]

    def ctc_labels(self, enc: Tensor, blank_penalty: float = 0.0) -> Tensor:
        """(B, T, D) -> (B, T) int64 best CTC label of every frame, the blank logit lowered by
        ``blank_penalty`` (``segments: ctc``), without the CTC head's dropout in either mode."""
        ctc = self._ctc_head()
        logits = ctc.logits(enc, dropout=False).float()
        if blank_penalty:
            logits = logits.clone()
            logits[..., ctc.blank_id] -= blank_penalty
        return logits.argmax(dim=-1)

    def predict_alphas(self, enc: Tensor, enc_lens: Tensor) -> Tensor:
        """(B, T, D), (B,) -> (B, T) float32 firing weights (float64 in a float64 model), zero
        beyond ``enc_lens`` (``segments: cif``)."""
        if self.predictor is None:
            raise RuntimeError("a CIF head with segments: ctc has no weight predictor")
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

    def infer(self, enc: Tensor, enc_lens: Tensor, blank_penalty: float = 0.0) -> CIFInference:
        """Token embeddings without any reference (the count is learnt, or greedy CTC's), then
        the decoder. No reference token is ever fed here (glancing is a training device).

        Args:
            enc: (B, T, D) encoder output; enc_lens: (B,) valid frames.
            blank_penalty: lowers the CTC blank logit of the greedy path (``segments: ctc``).
        """
        if self.uses_ctc:
            labels = self.ctc_labels(enc, blank_penalty)
            return self.infer_segments(enc, enc_lens, labels)
        alphas = self.predict_alphas(enc, enc_lens)
        fired, fired_lens = cif(enc, alphas, self.cfg.threshold)
        logits = self.decode(self.input_proj(fired), fired_lens, enc, enc_lens)
        frames = cif_fire_frames(alphas, fired_lens, self.cfg.threshold)
        return CIFInference(logits, fired_lens, frames)

    def infer_segments(self, enc: Tensor, enc_lens: Tensor, labels: Tensor) -> CIFInference:
        """:meth:`infer` of ``segments: ctc`` on given greedy CTC labels (B, T) of ``enc``
        (:meth:`ctc_labels`; a streaming search keeps those of the frames so far)."""
        segments = ctc_greedy_segments(labels, enc_lens, self._ctc_head().blank_id)
        count = segments.tokens.shape[1]
        fired = segment_means(enc, segments.segment_ids, count)
        logits = self.decode(self.input_proj(fired), segments.token_lens, enc, enc_lens)
        return CIFInference(logits, segments.token_lens, segments.first_frames)

    def _targets(self, tokens: Tensor, token_lens: Tensor) -> tuple[Tensor, Tensor]:
        """The decoder's targets: ``tokens`` (B, U), with an end slot ``y <end>`` (B, U + 1)."""
        tokens, token_lens = tokens.long(), token_lens.long()
        if not self.cfg.end_slot:
            return tokens, token_lens
        padded = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], 1)], dim=1)
        padded = padded * lengths_to_mask(token_lens, padded.shape[1])
        return padded.scatter(1, token_lens[:, None], self.cfg.end_id), token_lens + 1

    def teacher_inputs(
        self, enc: Tensor, enc_lens: Tensor, tokens: Tensor, token_lens: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Decoder inputs of the reference (or of any hypothesis): as many token embeddings as
        targets, from weights rescaled to that count, or from the Viterbi CTC alignment.

        Args:
            enc: (B, T, D); enc_lens: (B,).
            tokens: (B, U) ids (no end label), 0 beyond ``token_lens``; token_lens: (B,).

        Returns:
            inputs: (B, L, d_model), targets (B, L), target_lens (B,) (L = U, or U + 1 with an
            end slot) and the predicted weights (B, T) (None for ``segments: ctc``).
        """
        targets, target_lens = self._targets(tokens, token_lens)
        if self.uses_ctc:
            ctc = self._ctc_head()
            with torch.no_grad():  # the alignment does not depend on the CTC head's dropout
                log_probs = ctc.log_probs(enc, dropout=False)
            aligned = ctc_forced_align(log_probs, enc_lens, tokens, token_lens, ctc.blank_id)
            return (
                self.input_proj(segment_means(enc, aligned, targets.shape[1])),
                targets,
                target_lens,
                None,
            )
        alphas = self.predict_alphas(enc, enc_lens)
        scaled = scale_alphas(alphas, target_lens) * self.cfg.threshold
        fired, _ = cif(enc, scaled, self.cfg.threshold, num_fired=targets.shape[1])
        return self.input_proj(fired), targets, target_lens, alphas

    @torch.no_grad()
    def score_tokens(
        self, enc: Tensor, enc_lens: Tensor, tokens: Tensor, token_lens: Tensor
    ) -> Tensor:
        """Log-probability of hypotheses under the decoder with their own count: the inputs of
        :meth:`teacher_inputs` (n-best rescoring).

        Args:
            enc: (B, T, D); enc_lens: (B,); tokens: (B, U) hypotheses, 0 beyond token_lens.

        Returns:
            (B,) float32 sums of the targets' log-probabilities (the end label included).
        """
        inputs, targets, target_lens, _ = self.teacher_inputs(enc, enc_lens, tokens, token_lens)
        logits = self.decode(inputs, target_lens, enc, enc_lens)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        picked = log_probs.gather(2, targets[..., None]).squeeze(2)
        return (picked * lengths_to_mask(target_lens, targets.shape[1])).sum(dim=1)

    def score_sequences(
        self, enc: Tensor, enc_lens: Tensor, hyps: Sequence[Sequence[int]]
    ) -> Tensor:
        """:meth:`score_tokens` of token lists, with the contract of
        :meth:`asr.heads.aed.AEDHead.score_sequences` (n-best rescoring).

        Args:
            enc: (N, T, D) one row per hypothesis, or (1, T, D) shared by all of them.
            enc_lens: (N,) or (1,) valid frames.
            hyps: N token sequences (no blanks, no end label).

        Returns:
            (N,) float32 log-probabilities.
        """
        num = len(hyps)
        if num == 0:
            return torch.zeros(0, device=enc.device)
        enc, enc_lens = per_hypothesis(enc, enc_lens, num)
        tokens, lens = pad_sequences(hyps, enc.device)
        return self.score_tokens(enc, enc_lens, tokens, lens)

    def _glance(
        self, inputs: Tensor, first_pass: Tensor, targets: Tensor, valid: Tensor
    ) -> tuple[Tensor, int]:
        """Replaces ``floor(ratio * errors)`` random inputs per row by reference embeddings,
        errors being the first pass's wrong positions."""
        assert self.target_embed is not None
        with torch.no_grad():
            errors = ((first_pass != targets) & valid).sum(dim=1)
            num_glanced = (errors.float() * self.cfg.glancing_ratio).floor().long()
            scores = torch.rand(targets.shape, device=targets.device).masked_fill(~valid, 2.0)
            ranks = scores.argsort(dim=1).argsort(dim=1)
            glanced = ranks < num_glanced.unsqueeze(1)
        reference = self.target_embed(targets).to(inputs.dtype)
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
            tokens: (B, U) target ids, padded beyond ``token_lens`` with any value (0, WeNet's
                -1: it is never read).
            token_lens: (B,) number of target tokens.

        Returns:
            LossOutput; metrics ``ce_loss``, ``quantity_loss`` (``segments: cif``),
            ``num_correct`` (argmax hits of the first pass, whose inputs hold no reference
            token), ``num_tokens`` (decoder positions: U, or U + 1 with an end slot),
            ``num_infinite`` (utterances without frames: nothing to integrate or attend to,
            left out of the loss and of the other metrics, as the CTC and transducer heads
            drop them) and, with glancing, ``num_glanced``.

        Raises:
            ValueError: naming a token within ``token_lens`` outside ``[0, V)``, the blank, or
                with an end slot ``end_id``.
        """
        cfg = self.cfg
        enc = zero_padding(enc, enc_lens)  # masked attention weighs padding by 0: 0 * nan
        reserved = {0: "the blank"}  # and the end label, which the end slot appends
        if self.end_id is not None:
            reserved[self.end_id] = "the CIF end_id"
        tokens = blank_padded_tokens(tokens, token_lens, 0, self.vocab_size, reserved=reserved)
        inputs, targets, target_lens, alphas = self.teacher_inputs(
            enc, enc_lens, tokens, token_lens
        )
        trained = trained_utterances(enc_lens.to(targets.device), "CIF")
        num_infinite = int((~trained).sum())
        valid = lengths_to_mask(target_lens, targets.shape[1]) & trained[:, None]
        metrics: dict[str, float] = {"num_infinite": float(num_infinite)}
        if self.target_embed is not None and self.training:
            with torch.no_grad():
                first_pass = self.decode(inputs, target_lens, enc, enc_lens).argmax(dim=-1)
            inputs, num_glanced = self._glance(inputs, first_pass, targets, valid)
            metrics["num_glanced"] = float(num_glanced)
            logits = self.decode(inputs, target_lens, enc, enc_lens)
        else:
            logits = self.decode(inputs, target_lens, enc, enc_lens)
            first_pass = logits.argmax(dim=-1)
        ce = torch.where(valid, label_smoothing_loss(logits, targets, cfg.label_smoothing), 0.0)
        ce = ce.sum()
        loss = ce
        if alphas is not None:
            quantity = quantity_loss(alphas / cfg.threshold, target_lens)
            quantity = torch.where(trained, quantity, 0.0).sum()
            loss = loss + cfg.quantity_weight * quantity
            metrics["quantity_loss"] = float(quantity.detach())
        metrics.update(
            ce_loss=float(ce.detach()),
            num_correct=float(((first_pass == targets) & valid).sum()),
            num_tokens=float(valid.sum()),
        )
        return LossOutput(loss=loss, num_utterances=enc.shape[0], metrics=metrics)
