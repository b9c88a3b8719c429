"""Pre-norm Transformer decoder layers shared by the AED and CIF heads.

Vaswani et al. 2017, "Attention Is All You Need" (multi-head attention, sinusoidal positions);
Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture" (pre-norm).

A layer is self-attention (optionally causal, optionally continuing a key/value cache),
cross-attention to the encoder output, and a feed-forward block, each as
``x + dropout(block(norm(x)))``. Self-attention keys/values are returned so that incremental
decoding can keep them in an explicit cache (see :class:`asr.heads.aed.AEDCache`).

Masks are boolean with True = may attend.

Shape legend: B batch, L query positions, S key positions, D model dims, H heads, K = D / H.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.encoders.attention import sinusoid_encoding
from asr.encoders.dropout import Dropout

__all__ = [
    "DecoderLayer",
    "MultiHeadAttention",
    "causal_mask",
    "check_sinusoidal_dim",
    "lengths_to_mask",
    "pad_sequences",
    "per_hypothesis",
    "sinusoidal_positions",
    "trained_utterances",
]

logger = logging.getLogger(__name__)


def lengths_to_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """(B,) lengths -> (B, max_len) bool, True at valid positions."""
    if max_len is None:
        max_len = int(lengths.max().item()) if lengths.numel() else 0
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def pad_sequences(
    hyps: Sequence[Sequence[int]], device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """N token sequences -> tokens (N, max(1, longest)) int64 padded with 0, and lens (N,)."""
    lens = torch.tensor([len(h) for h in hyps], dtype=torch.long, device=device)
    width = max(1, int(lens.max())) if len(hyps) else 1
    tokens = torch.zeros(len(hyps), width, dtype=torch.long, device=device)
    for row, hyp in enumerate(hyps):
        tokens[row, : len(hyp)] = torch.as_tensor(list(hyp), dtype=torch.long)
    return tokens, lens


def per_hypothesis(enc: Tensor, enc_lens: Tensor, num: int) -> tuple[Tensor, Tensor]:
    """The encoder rows of ``num`` hypotheses: ``enc`` (N, T, D) / ``enc_lens`` (N,) as given, or
    a single row (1, T, D) / (1,) shared by all of them (expanded, not copied)."""
    if enc.shape[0] == 1 and num != 1:
        return enc.expand(num, -1, -1), enc_lens.expand(num)
    if enc.shape[0] != num:
        raise ValueError(f"score_sequences: {num} hypotheses but enc has batch {enc.shape[0]}")
    return enc, enc_lens


def trained_utterances(
    enc_lens: Tensor,
    head: str,
    token_lens: Tensor | None = None,
    max_tokens: int | None = None,
    option: str = "max_tokens",
) -> Tensor:
    """(B,) bool, True for the utterances a decoder loss trains on: those with encoder frames
    and, given ``max_tokens``, at most that many target tokens.

    An utterance without frames has nothing to cross-attend to (:meth:`MultiHeadAttention.attend`
    would read padding for it), so the decoder heads leave it out of their loss, as the CTC and
    transducer losses leave it out as infeasible; so too a target longer than a decoder can
    place (learned positions: none past the last). A warning names ``head`` and the count of
    each kind (``option``: the setting that limits the tokens).

    Args:
        enc_lens: (B,) encoder frames.
        head: the head's name, for the warning.
        token_lens: (B,) target tokens; needed with ``max_tokens``.
        max_tokens: the most target tokens a trained utterance may have; None: no limit.
        option: the setting that gives ``max_tokens``, as the warning names it.
    """
    trained = enc_lens > 0
    dropped = int((~trained).sum())
    if dropped:
        logger.warning(
            "%s: %d of %d utterances have no encoder frames; their loss was zeroed",
            head, dropped, trained.shape[0],
        )  # fmt: skip
    if max_tokens is not None:
        if token_lens is None:
            raise ValueError("trained_utterances: max_tokens needs token_lens")
        fits = token_lens.to(trained.device) <= max_tokens
        too_long = int((trained & ~fits).sum())
        if too_long:
            logger.warning(
                "%s: %d of %d utterances have more than %d target tokens (%s); their loss "
                "was zeroed",
                head, too_long, trained.shape[0], max_tokens, option,
            )  # fmt: skip
        trained = trained & fits
    return trained


def causal_mask(length: int, device: torch.device | None = None) -> Tensor:
    """(L, L) bool lower-triangular mask: position i attends to positions <= i."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def check_sinusoidal_dim(dim: int, name: str = "dim") -> None:
    """Raises ``ValueError`` naming ``name`` unless ``dim`` is even: sinusoidal encodings pair a
    sine and a cosine per frequency."""
    if dim % 2:
        raise ValueError(f"sinusoidal positions need an even {name}, got {dim}")


def sinusoidal_positions(
    length: int,
    dim: int,
    offset: int = 0,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(length, dim) sinusoidal encodings of positions ``offset .. offset + length - 1``
    (:func:`asr.encoders.attention.sinusoid_encoding`, the one table of the encoders' relative
    distances too)."""
    check_sinusoidal_dim(dim, "dimension")
    positions = torch.arange(offset, offset + length, device=device)
    return sinusoid_encoding(positions, dim, dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention with separate key/value projection.

    Args:
        d_model: model dimension D.
        num_heads: number of heads H (must divide D).
        dropout: attention-probability dropout (training only).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def project_key_value(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S, D) -> keys, values each (B, H, S, K)."""
        return self._split(self.key(source)), self._split(self.value(source))

    def attend(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        """Attends ``query`` (B, L, D) to projected ``keys``/``values`` (B, H, S, K).

        Args:
            mask: bool broadcastable to (B, L, S), True = may attend. A query row with no
                allowed key (e.g. an utterance with zero positions) attends everywhere instead
                of producing NaN; such rows are padding and must be ignored by the caller.

        Returns:
            (B, L, D)
        """
        q = self._split(self.query(query))
        attn_mask = None
        if mask is not None:
            mask = mask | ~mask.any(dim=-1, keepdim=True)
            attn_mask = mask.unsqueeze(1)  # broadcast over heads
        context = F.scaled_dot_product_attention(
            q,
            keys,
            values,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        batch, _, length, _ = context.shape
        return self.out(
            context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        )


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: self-attention, cross-attention to memory, feed-forward.

    Args:
        d_model: model dimension D.
        num_heads: attention heads.
        ffn_dim: hidden size of the feed-forward block.
        dropout: residual, attention and feed-forward dropout.
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.cross_norm = nn.LayerNorm(d_model)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.ReLU(), Dropout(dropout), nn.Linear(ffn_dim, d_model)
        )
        self.dropout = Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_mask: Tensor,
        self_mask: Tensor | None = None,
        past_key_value: tuple[Tensor, Tensor] | None = None,
        memory_key_value: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Runs the layer on ``x``, optionally continuing cached self-attention keys/values.

        Args:
            x: (B, L, D) decoder inputs (the new positions only when a cache is given).
            memory: (B, S, D) encoder output.
            memory_mask: (B, S) bool, True at valid encoder frames.
            self_mask: bool broadcastable to (B, L, P + L) over the P cached and L new
                positions; None = attend to all.
            past_key_value: keys, values (B, H, P, K) of earlier positions, or None.
            memory_key_value: cross-attention keys, values (B, H, S, K) already projected
                from ``memory`` (searches compute them once), or None to project ``memory``.

        Returns:
            x: (B, L, D) outputs; keys, values: (B, H, P + L, K) for the cache.
        """
        normed = self.self_norm(x)
        keys, values = self.self_attn.project_key_value(normed)
        if past_key_value is not None:
            keys = torch.cat([past_key_value[0], keys], dim=2)
            values = torch.cat([past_key_value[1], values], dim=2)
        x = x + self.dropout(self.self_attn.attend(normed, keys, values, self_mask))
        normed = self.cross_norm(x)
        if memory_key_value is None:
            memory_key_value = self.cross_attn.project_key_value(memory)
        mem_keys, mem_values = memory_key_value
        x = x + self.dropout(
            self.cross_attn.attend(normed, mem_keys, mem_values, memory_mask.unsqueeze(1))
        )
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, keys, values
