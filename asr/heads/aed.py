"""Attention-based encoder-decoder (AED) head: an autoregressive Transformer decoder.

Vaswani et al. 2017, "Attention Is All You Need"; Chan et al. 2016, "Listen, Attend and Spell"
(attention decoders for ASR); Kim et al. 2017, "Joint CTC-Attention based End-to-End Speech
Recognition using Multi-task Learning"; the optional right-to-left decoder follows WeNet's
bidirectional decoder (Zhang et al. 2021, "WeNet 2.0", U2++), whose scores are mixed with
``reverse_weight`` both in the loss and when rescoring hypotheses.

Training is teacher-forced: inputs ``<sos> y_1 .. y_U``, targets ``y_1 .. y_U <eos>``, loss the
label-smoothed KL of :func:`asr.losses.label_smoothing.label_smoothing_loss` summed over the
valid positions of each utterance. An utterance without encoder frames has nothing to attend
to (its cross-attention would read padding): it is dropped from the loss and counted in
``metrics["num_infinite"]``, as the CTC and transducer heads drop it. With learned positions
a target of ``max_len`` tokens or more has no position for its last input (``<sos>`` takes the
first): it is dropped from the loss too, counted in ``metrics["num_too_long"]`` and logged
with the count, in training and validation alike (like WeNet's ``token_max_length`` data
filter, but per head: the other heads still train on it, and the dev WER decodes it); the
AED beam search ends its hypotheses at that limit and :meth:`AEDHead.score_sequences` scores a
longer hypothesis ``-inf``. Searches use
:meth:`AEDHead.init_cache` / :meth:`AEDHead.step` (one token per hypothesis per call, with the
self-attention keys and values of earlier positions kept in an explicit :class:`AEDCache`) and
:meth:`AEDHead.score_sequences` (attention rescoring).

Shape legend: B batch, N hypotheses, T encoder frames, U tokens, D model dims, V vocabulary
(incl. blank 0, which the decoder never targets), Y layers, H heads, K = D / H, P cached positions.
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
from asr.heads.decoder_layers import (
    DecoderLayer,
    causal_mask,
    check_sinusoidal_dim,
    lengths_to_mask,
    pad_sequences,
    per_hypothesis,
    sinusoidal_positions,
    trained_utterances,
)
from asr.losses.label_smoothing import check_label_smoothing, label_smoothing_loss
from asr.losses.pruned_rnnt import blank_padded_tokens
from asr.state import state_field
from asr.types import LossOutput

__all__ = ["AEDCache", "AEDConfig", "AEDHead", "AEDMemory", "AttentionDecoder"]


@dataclass(frozen=True)
class AEDConfig:
    """Configuration of :class:`AEDHead`.

    Attributes:
        d_model: decoder dimension D (the encoder output is projected to it if different);
            even with sinusoidal positions.
        num_heads: attention heads.
        num_layers: left-to-right decoder layers.
        ffn_dim: feed-forward hidden size.
        dropout: dropout in the decoder layers and on the embeddings.
        positional: ``sinusoidal`` (any length) or ``learned`` (at most ``max_len`` positions).
        max_len: number of learned positions: the AED loss leaves out a target of
            ``max_len`` tokens or more (``<sos>`` takes a position), the AED beam search ends
            its hypotheses at ``max_len - 1`` tokens and rescoring ranks a longer first-pass
            hypothesis last (an utterance with no shorter one keeps its first-pass n-best).
        label_smoothing: probability mass spread over the non-reference tokens, in ``[0, 1)``.
        reverse_weight: weight of the right-to-left decoder in the loss and in
            :meth:`AEDHead.score_sequences`; 0 builds no right-to-left decoder.
        num_r2l_layers: layers of the right-to-left decoder.
        sos_id: start symbol (``<sos/eos>`` = 1 with our tokenizers).
        eos_id: end symbol.
    """

    d_model: int = 256
    num_heads: int = 4
    num_layers: int = 6
    ffn_dim: int = 2048
    dropout: float = 0.1
    positional: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_len: int = 512
    label_smoothing: float = 0.1
    reverse_weight: float = 0.0
    num_r2l_layers: int = 3
    sos_id: int = 1
    eos_id: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.reverse_weight < 1.0:
            raise ValueError(f"reverse_weight must be in [0, 1), got {self.reverse_weight}")
        if self.reverse_weight > 0 and self.num_r2l_layers < 1:
            raise ValueError("reverse_weight > 0 needs num_r2l_layers >= 1")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        # refused here, not at the first training step (after the data and CMVN are read)
        check_label_smoothing(self.label_smoothing, "label_smoothing")
        if self.positional == "sinusoidal":
            check_sinusoidal_dim(self.d_model, "d_model")


@dataclass(frozen=True)
class AEDCache:
    """Self-attention keys and values of the positions decoded so far, for every layer.

    A State in the sense of :mod:`asr.state` (batch dimension 1), so the generic
    ``stack_states`` / ``select_states`` apply; :meth:`select` is the same for beam search.

    Attributes:
        keys: (Y, N, H, P, K).
        values: (Y, N, H, P, K).
    """

    keys: Tensor = state_field(batch_dim=1)
    values: Tensor = state_field(batch_dim=1)

    @property
    def num_positions(self) -> int:
        """P, the number of tokens already fed (the position of the next one)."""
        return self.keys.shape[3]

    def select(self, indices: Tensor) -> AEDCache:
        """Keeps/reorders hypotheses: ``indices`` (N',) int into the N dimension."""
        return AEDCache(self.keys.index_select(1, indices), self.values.index_select(1, indices))


@dataclass(frozen=True)
class AEDMemory:
    """Cross-attention keys and values of the encoder output for every decoder layer, computed
    once per search by :meth:`AEDHead.precompute_memory` instead of on every :meth:`AEDHead.step`
    (a State, batch dimension 1, like :class:`AEDCache`).

    Attributes:
        keys: (Y, N, H, T, K).
        values: (Y, N, H, T, K).
    """

    keys: Tensor = state_field(batch_dim=1)
    values: Tensor = state_field(batch_dim=1)


class AttentionDecoder(nn.Module):
    """Token embedding + positions + causal pre-norm decoder layers + output projection.

    Args:
        cfg: head configuration (dimensions, positions, dropout).
        num_layers: number of decoder layers.
        vocab_size: V.
    """

    def __init__(self, cfg: AEDConfig, num_layers: int, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.positions = (
            nn.Embedding(cfg.max_len, cfg.d_model) if cfg.positional == "learned" else None
        )
        self.embed_dropout = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg.d_model, cfg.num_heads, cfg.ffn_dim, cfg.dropout)
            for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(cfg.d_model)
        self.output = nn.Linear(cfg.d_model, vocab_size)

    def _embed(self, tokens: Tensor, offset: int) -> Tensor:
        length = tokens.shape[1]
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model)
        if self.positions is not None:
            if offset + length > self.cfg.max_len:
                raise ValueError(
                    f"AED learned positions: position {offset + length - 1} exceeds "
                    f"max_len={self.cfg.max_len}"
                )
            pos = self.positions(torch.arange(offset, offset + length, device=tokens.device))
        else:
            pos = sinusoidal_positions(length, self.cfg.d_model, offset, tokens.device, x.dtype)
        return self.embed_dropout(x + pos)

    def forward(self, tokens: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """Teacher-forced pass over whole sequences.

        Args:
            tokens: (N, L) decoder inputs (starting with ``<sos>``; padding is never attended
                by valid positions thanks to the causal mask).
            memory: (N, T, D) projected encoder output.
            memory_mask: (N, T) bool, True at valid frames.

        Returns:
            (N, L, V) logits.
        """
        x = self._embed(tokens, 0)
        mask = causal_mask(tokens.shape[1], tokens.device).unsqueeze(0)
        for layer in self.layers:
            x, _, _ = layer(x, memory, memory_mask, self_mask=mask)
        return self.output(self.final_norm(x))

    def project_memory(self, memory: Tensor) -> AEDMemory:
        """(N, T, D) projected encoder output -> every layer's cross-attention keys/values."""
        pairs = [layer.cross_attn.project_key_value(memory) for layer in self.layers]
        return AEDMemory(torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs]))

    def step(
        self,
        tokens: Tensor,
        cache: AEDCache,
        memory: Tensor,
        memory_mask: Tensor,
        memory_kv: AEDMemory | None = None,
    ) -> tuple[Tensor, AEDCache]:
        """Feeds one token per hypothesis: (N,) -> logits (N, V) and the extended cache
        (``memory_kv``: precomputed cross-attention keys/values; ``memory`` is then unused)."""
        x = self._embed(tokens.unsqueeze(1), cache.num_positions)
        keys, values = [], []
        for index, layer in enumerate(self.layers):
            past = (cache.keys[index], cache.values[index])
            cross = None if memory_kv is None else (memory_kv.keys[index], memory_kv.values[index])
            x, layer_keys, layer_values = layer(
                x, memory, memory_mask, past_key_value=past, memory_key_value=cross
            )
            keys.append(layer_keys)
            values.append(layer_values)
        logits = self.output(self.final_norm(x)).squeeze(1)
        return logits, AEDCache(torch.stack(keys), torch.stack(values))


class AEDHead(nn.Module):
    """Attention decoder head (left-to-right, plus an optional right-to-left decoder).

    Args:
        cfg: head configuration.
        enc_dim: encoder output dimension.
        vocab_size: V, including blank (0) and ``<sos/eos>``.
    """

    def __init__(self, cfg: AEDConfig, enc_dim: int, vocab_size: int) -> None:
        super().__init__()
        for name in ("sos_id", "eos_id"):
            if not 0 < getattr(cfg, name) < vocab_size:
                raise ValueError(
                    f"AED {name}={getattr(cfg, name)} must be in [1, {vocab_size}) (0 is blank)"
                )
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.memory_proj = (
            nn.Linear(enc_dim, cfg.d_model) if enc_dim != cfg.d_model else nn.Identity()
        )
        self.decoder = AttentionDecoder(cfg, cfg.num_layers, vocab_size)
        self.r2l_decoder = (
            AttentionDecoder(cfg, cfg.num_r2l_layers, vocab_size)
            if cfg.reverse_weight > 0
            else None
        )

    @property
    def reserved_ids(self) -> dict[int, str]:
        """The ids no target may hold, with what each is: blank (0) and ``sos_id``/``eos_id``
        (a target holding ``eos_id`` teaches the decoder to end the sentence there)."""
        sos, eos = self.cfg.sos_id, self.cfg.eos_id
        both = "the AED sos_id and eos_id"
        return {0: "the blank", sos: both if sos == eos else "the AED sos_id",
                eos: both if sos == eos else "the AED eos_id"}

    @property
    def max_target_tokens(self) -> int | None:
        """The most target tokens the loss trains on and a search produces or scores: with
        learned positions ``max_len - 1`` (``<sos>`` takes the first position), a longer target
        being left out of the loss; None with sinusoidal positions (any length)."""
        return self.cfg.max_len - 1 if self.cfg.positional == "learned" else None

    # ----------------------------------------------------------------------------- training
    def _teacher_forcing(self, tokens: Tensor, token_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs ``<sos> y`` and targets ``y <eos>``, both (B, U + 1) padded with 0."""
        batch = tokens.shape[0]
        sos = torch.full((batch, 1), self.cfg.sos_id, dtype=torch.long, device=tokens.device)
        inputs = torch.cat([sos, tokens.long()], dim=1)
        targets = torch.cat([tokens.long(), torch.zeros_like(sos)], dim=1)
        targets = targets.scatter(1, token_lens.long().unsqueeze(1), self.cfg.eos_id)
        return inputs, targets

    @staticmethod
    def _reverse(tokens: Tensor, token_lens: Tensor) -> Tensor:
        """Reverses each row within its length; padding stays 0."""
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        index = (token_lens.long().unsqueeze(1) - 1 - positions).clamp(min=0)
        valid = positions.unsqueeze(0) < token_lens.unsqueeze(1)
        return torch.where(valid, tokens.gather(1, index), torch.zeros_like(tokens))

    def _decoder_loss(
        self,
        decoder: AttentionDecoder,
        memory: Tensor,
        memory_mask: Tensor,
        tokens: Tensor,
        token_lens: Tensor,
        trained: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Summed label-smoothed loss and the number of correct argmax predictions over the
        positions of the ``trained`` (B,) utterances."""
        inputs, targets = self._teacher_forcing(tokens, token_lens)
        logits = decoder(inputs, memory, memory_mask)
        valid = lengths_to_mask(token_lens + 1, inputs.shape[1]) & trained[:, None]
        per_position = label_smoothing_loss(logits, targets, self.cfg.label_smoothing)
        loss = torch.where(valid, per_position, 0.0).sum()
        correct = ((logits.argmax(dim=-1) == targets) & valid).sum()
        return loss, correct

    def loss(
        self, enc: Tensor, enc_lens: Tensor, tokens: Tensor, token_lens: Tensor,
        step: int | None = None,
    ) -> LossOutput:
        """Teacher-forced decoder loss summed over the batch.

        Args:
            enc: (B, T, enc_dim) encoder output.
            enc_lens: (B,) valid frames.
            tokens: (B, U) target ids (no sos/eos), padded beyond ``token_lens`` with any value
                (0, WeNet's -1: it is never read).
            token_lens: (B,) number of target tokens.

        Returns:
            LossOutput; metrics ``loss_l2r`` (and ``loss_r2l``), ``num_correct`` and
            ``num_tokens`` (of the left-to-right decoder, eos included) for accuracy,
            ``num_infinite`` (utterances without frames) and ``num_too_long`` (learned
            positions: targets of ``max_len`` tokens or more), both left out of all of them.

        Raises:
            ValueError: naming a token within ``token_lens`` outside ``[0, V)``, or one of
                :attr:`reserved_ids`.
        """
        enc = zero_padding(enc, enc_lens)  # masked attention weighs padding by 0: 0 * nan
        tokens = blank_padded_tokens(
            tokens, token_lens, 0, self.vocab_size, reserved=self.reserved_ids
        )
        memory = self.memory_proj(enc)
        memory_mask = lengths_to_mask(enc_lens, enc.shape[1])
        enc_lens = enc_lens.to(memory.device)
        limit = self.max_target_tokens
        trained = trained_utterances(
            enc_lens, "AED", token_lens, limit,
            f"heads.aed.max_len={self.cfg.max_len} learned positions, <sos> first",
        )
        num_infinite = int((enc_lens == 0).sum())
        num_too_long = int((enc_lens > 0).sum()) - int(trained.sum())
        if limit is not None:  # the left-out targets' positions are never embedded
            tokens = tokens[:, :limit]
            token_lens = token_lens.clamp(max=limit)
        loss_l2r, correct = self._decoder_loss(
            self.decoder, memory, memory_mask, tokens, token_lens, trained
        )
        metrics = {
            "loss_l2r": float(loss_l2r.detach()),
            "num_correct": float(correct),
            "num_tokens": float(((token_lens.to(trained.device) + 1) * trained).sum()),
            "num_infinite": float(num_infinite),
            "num_too_long": float(num_too_long),
        }
        loss = loss_l2r
        if self.r2l_decoder is not None:
            reversed_tokens = self._reverse(tokens, token_lens)
            loss_r2l, _ = self._decoder_loss(
                self.r2l_decoder, memory, memory_mask, reversed_tokens, token_lens, trained
            )
            metrics["loss_r2l"] = float(loss_r2l.detach())
            weight = self.cfg.reverse_weight
            loss = (1.0 - weight) * loss_l2r + weight * loss_r2l
        return LossOutput(loss=loss, num_utterances=enc.shape[0], metrics=metrics)

    # ------------------------------------------------------------------------------ search
    def init_cache(
        self, batch_size: int, device: torch.device | str, dtype: torch.dtype = torch.float32
    ) -> AEDCache:
        """An empty cache for ``batch_size`` hypotheses (the first :meth:`step` feeds sos)."""
        cfg = self.cfg
        shape = (cfg.num_layers, batch_size, cfg.num_heads, 0, cfg.d_model // cfg.num_heads)
        empty = torch.zeros(shape, device=device, dtype=dtype)
        return AEDCache(empty, empty.clone())

    def precompute_memory(self, enc: Tensor) -> AEDMemory:
        """Cross-attention keys/values of ``enc`` (N, T, enc_dim) for :meth:`step`: a search
        computes them once instead of at every step (they depend on the encoder output only)."""
        return self.decoder.project_memory(self.memory_proj(enc))

    def step(
        self,
        prev_tokens_last: Tensor,
        cache: AEDCache,
        enc: Tensor,
        enc_mask: Tensor,
        memory: AEDMemory | None = None,
    ) -> tuple[Tensor, AEDCache]:
        """One incremental left-to-right decoding step.

        Args:
            prev_tokens_last: (N,) the last token of each hypothesis (``sos_id`` first).
            cache: keys/values of the earlier tokens of each hypothesis.
            enc: (N, T, enc_dim) encoder output, one row per hypothesis.
            enc_mask: (N, T) bool, True at valid frames.
            memory: :meth:`precompute_memory` of ``enc`` (rows as in ``enc``), or None to
                project ``enc`` in this step.

        Returns:
            log_probs: (N, V) float32 next-token log-probabilities; cache: extended by one.
        """
        memory_input = enc if memory is not None else self.memory_proj(enc)
        logits, cache = self.decoder.step(
            prev_tokens_last.long(), cache, memory_input, enc_mask, memory
        )
        return torch.log_softmax(logits.float(), dim=-1), cache

    def _sequence_log_probs(
        self, decoder: AttentionDecoder, memory: Tensor, mask: Tensor, tokens: Tensor, lens: Tensor
    ) -> Tensor:
        inputs, targets = self._teacher_forcing(tokens, lens)
        log_probs = torch.log_softmax(decoder(inputs, memory, mask).float(), dim=-1)
        token_lp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return (token_lp * lengths_to_mask(lens + 1, inputs.shape[1])).sum(dim=1)

    def score_sequences(
        self, enc: Tensor, enc_lens: Tensor, hyps: Sequence[Sequence[int]]
    ) -> Tensor:
        """Teacher-forced log-probability of complete hypotheses (``<eos>`` included).

        With a right-to-left decoder the score is
        ``(1 - reverse_weight) * l2r + reverse_weight * r2l`` as in WeNet's attention rescoring.

        A hypothesis longer than :attr:`max_target_tokens` (learned positions) scores
        ``-inf``: the decoder has no position for it, so it can neither produce it (the AED
        beam search ends every hypothesis there) nor score it.

        Args:
            enc: (N, T, enc_dim) encoder output, one row per hypothesis, or (1, T, enc_dim)
                shared by all hypotheses.
            enc_lens: (N,) or (1,) valid frames.
            hyps: N token sequences (no sos/eos, no blanks).

        Returns:
            (N,) float32 scores.
        """
        num = len(hyps)
        if num == 0:
            return torch.zeros(0, device=enc.device)
        enc, enc_lens = per_hypothesis(enc, enc_lens, num)
        limit = self.max_target_tokens
        placed = [row for row, hyp in enumerate(hyps) if limit is None or len(hyp) <= limit]
        if len(placed) == num:
            return self._score_placed(enc, enc_lens, hyps)
        scores = torch.full((num,), float("-inf"), device=enc.device)
        if placed:
            rows = torch.tensor(placed, device=enc.device)
            scores[rows] = self._score_placed(
                enc[rows], enc_lens[rows.to(enc_lens.device)], [hyps[row] for row in placed]
            )
        return scores

    def _score_placed(
        self, enc: Tensor, enc_lens: Tensor, hyps: Sequence[Sequence[int]]
    ) -> Tensor:
        """:meth:`score_sequences` of N hypotheses that all fit the positions: enc (N, T,
        enc_dim), enc_lens (N,) -> (N,) float32."""
        tokens, lens = pad_sequences(hyps, enc.device)
        memory = self.memory_proj(enc)
        mask = lengths_to_mask(enc_lens, enc.shape[1])
        score = self._sequence_log_probs(self.decoder, memory, mask, tokens, lens)
        if self.r2l_decoder is not None:
            reversed_tokens = self._reverse(tokens, lens)
            r2l = self._sequence_log_probs(self.r2l_decoder, memory, mask, reversed_tokens, lens)
            score = (1.0 - self.cfg.reverse_weight) * score + self.cfg.reverse_weight * r2l
        return score
