"""Transducer head: predictor + joiner, trained with the full RNN-T, pruned RNN-T or TDT loss.

* ``loss="full"``: Graves 2012 (arXiv:1211.3711), torchaudio's loss on the full
  ``(B, T, U + 1, V)`` joiner output (:mod:`asr.losses.rnnt`).
* ``loss="pruned"``: Kuang et al. 2022 (arXiv:2206.13236, :mod:`asr.losses.pruned_rnnt`):
  ``simple_scale * simple_loss + pruned_scale * pruned_loss``. The simple loss uses two extra
  linear layers (encoder -> V, predictor -> V) as the additive "trivial joiner"; the real joiner
  runs only on the ``prune_range`` band chosen from the simple loss' occupations.
* ``loss="tdt"``: Xu et al. 2023 (arXiv:2304.06795, :mod:`asr.losses.tdt`); the joiner emits
  ``V + len(durations)`` logits. ``sigma`` (logit under-normalisation) and ``omega`` (weight of
  the plain RNN-T loss on the token logits) are the paper's options; NeMo's recipes use 0.05 and
  0.1, ours default to 0 (off).
* ``loss="pruned_tdt"``: the TDT loss pruned as the RNN-T one is (:mod:`asr.losses.pruned_tdt`):
  ``simple_scale * simple_tdt_loss + pruned_scale * pruned_tdt_loss``, the simple projections
  having ``V + len(durations)`` outputs; the joiner runs only on the ``prune_range`` band chosen
  from the simple TDT loss' occupations. The same TDT model (a ``tdt`` head for the searchers);
  the durations must include 0 and 1.

Warm-up (pruned losses only): the trainer passes the training step to :meth:`TransducerHead.loss`
(through :meth:`asr.model.ASRModel.forward`). With ``f = min(step / warm_step, 1)``::

    simple_scale = 1 - f * (1 - simple_loss_scale)   # 1.0 at step 0 -> simple_loss_scale
    pruned_scale = 0.1 + 0.9 * f                      # 0.1 at step 0 -> 1.0

so early on, when the band chosen from a random simple joiner is poor, the simple loss dominates.
Without a step (``None``: evaluation outside training) the loss is the warmed-up one.

Symbol-delay penalty (``delay_penalty``, every loss; the pruned ones in their simple and their
pruned term, TDT's in its ``omega`` term too; :mod:`asr.losses.delay_penalty`): each token
emitted at frame ``t`` of an utterance of ``T_b`` frames (a TDT token whatever its duration) gets
``delay_penalty * ((T_b - 1) / 2 - t)`` added to its log-probability, so streaming models learn
to emit earlier; the loss reported is the penalised one. As icefall's recipes do (the penalty
applied from ``warmup >= 2``), it starts at step ``2 * warm_step`` (at once with ``warm_step:
0``, and without a step); before that the losses are the plain ones. k2 defines it for RNN-T;
neither k2 nor NeMo has one for TDT, whose penalty is this toolkit's extension of it.

Utterances with no alignment get an infinite loss from every loss function (``T_b = 0`` for all
three; a pruned band too narrow, ``T_b * (prune_range - 1) < U_b``; for TDT, more tokens than the
durations can place before the final blank, or a ``T_b`` the blank durations cannot end on); they
are dropped from the sum (no gradient) and counted in ``metrics["num_infinite"]``, as the CTC
head does (:mod:`asr.heads.ctc`). Empty targets are ordinary utterances (the all-blank path).

Shapes: B batch, T frames, U tokens, D encoder dim, P predictor dim, J joiner dim, V vocab
(incl. blank 0), R prune_range.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from asr.encoders.base import zero_padding
from asr.heads.joiner import Joiner
from asr.heads.predictor import LstmPredictor, StatelessPredictor
from asr.losses.delay_penalty import check_delay_penalty
from asr.losses.mutual_information import check_backend
from asr.losses.pruned_rnnt import (
    blank_padded_tokens,
    do_rnnt_pruning,
    get_pruning_ranges,
    rnnt_loss_pruned,
    rnnt_loss_simple,
)
from asr.losses.pruned_tdt import (
    check_pruned_durations,
    tdt_loss_pruned,
    tdt_loss_simple,
    tdt_pruning_ranges,
)
from asr.losses.rnnt import rnnt_loss
from asr.losses.tdt import tdt_loss
from asr.types import LossOutput

__all__ = ["TransducerConfig", "TransducerHead"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransducerConfig:
    """Configuration of :class:`TransducerHead`.

    Attributes:
        loss: ``full`` (torchaudio RNN-T), ``pruned`` (ours), ``tdt`` or ``pruned_tdt``.
        predictor: ``stateless`` (embedding + causal conv) or ``lstm``.
        pred_dim: predictor output size P.
        context_size: tokens seen by the stateless predictor.
        lstm_hidden_dim, lstm_num_layers: LSTM predictor sizes.
        predictor_dropout: LSTM predictor dropout.
        joiner_dim: J. joiner_activation: ``tanh`` or ``relu``.
        prune_range: R, symbols per frame kept by the pruned losses (>= 2).
        lm_only_scale, am_only_scale: smoothing of the simple loss (each >= 0, their sum <= 1:
            the weights of the lm-only and am-only log-probs beside the joint ones; the am-only
            ones are not k2's: :func:`asr.losses.pruned_rnnt.simple_lattice_logprobs`).
        simple_loss_scale: final weight of the simple loss (after ``warm_step`` steps; >= 0).
        warm_step: warm-up steps (0 disables warm-up).
        durations: TDT durations (token durations may include 0; blank never takes 0;
            ``pruned_tdt`` needs 0 and 1). ``durations``, ``sigma`` and ``omega`` are TDT
            settings: training refuses them with ``full`` or ``pruned`` unless they are the
            defaults (:meth:`check_tdt_fields`).
        sigma: TDT logit under-normalisation (0 = off; NeMo uses 0.05).
        omega: TDT only: ``loss = (1 - omega) * tdt + omega * rnnt`` with the plain RNN-T loss
            on the token logits, in ``[0, 1)`` (0 = off; NeMo uses 0.1, sampled per batch: see
            :mod:`asr.losses.tdt`).
        delay_penalty: symbol-delay penalty per frame (>= 0, 0 = off; module docstring),
            from step ``2 * warm_step`` on. icefall's default is 0; its delay-penalty
            experiments (arXiv:2211.00490, RNN-T) used 0.0015 to 0.01 (k2-fsa/icefall
            issue 710).
        clamp: torchaudio gradient clamp for the full loss (-1 = off; needs
            ``delay_penalty: 0``, the penalised full loss having no clamp).
        backend: recursion backend ``auto`` | ``torch`` | ``triton`` | ``k2`` of the
            mutual-information (pruned, full with a ``delay_penalty``, TDT's omega) and TDT
            recursions (k2 only for those RNN-T losses, where it is importable: training
            checks that before it starts, :meth:`check_backend`; ``auto``: Triton on CUDA).
        blank_id: blank index.
    """

    loss: Literal["full", "pruned", "tdt", "pruned_tdt"] = "pruned"
    predictor: Literal["stateless", "lstm"] = "stateless"
    pred_dim: int = 256
    context_size: int = 2
    lstm_hidden_dim: int = 320
    lstm_num_layers: int = 1
    predictor_dropout: float = 0.1
    joiner_dim: int = 256
    joiner_activation: Literal["tanh", "relu"] = "tanh"
    prune_range: int = 5
    lm_only_scale: float = 0.25
    am_only_scale: float = 0.0
    simple_loss_scale: float = 0.5
    warm_step: int = 2000
    durations: tuple[int, ...] = (0, 1, 2, 3, 4)
    sigma: float = 0.0
    omega: float = 0.0
    delay_penalty: float = 0.0
    clamp: float = -1.0
    backend: Literal["auto", "torch", "triton", "k2"] = "auto"
    blank_id: int = 0

    def __post_init__(self) -> None:
        if self.prune_range < 2:
            raise ValueError(f"prune_range must be >= 2, got {self.prune_range}")
        if self.warm_step < 0:
            raise ValueError(f"warm_step must be >= 0, got {self.warm_step}")
        # the simple loss mixes log-probs with weights 1 - lm - am, lm and am: a negative one
        # rewards the reference's improbability (a loss without a floor), as does a negative scale
        smoothing = self.lm_only_scale + self.am_only_scale
        if not (self.lm_only_scale >= 0 and self.am_only_scale >= 0 and smoothing <= 1):
            raise ValueError(
                f"lm_only_scale and am_only_scale must be >= 0 with a sum <= 1, got "
                f"{self.lm_only_scale} and {self.am_only_scale}"
            )
        if not 0.0 <= self.simple_loss_scale < math.inf:
            raise ValueError(
                f"simple_loss_scale must be >= 0 and finite, got {self.simple_loss_scale}"
            )
        if self.is_tdt and (
            not self.durations or min(self.durations) < 0 or max(self.durations) < 1
        ):
            raise ValueError(
                f"durations must be non-negative with at least one >= 1, got {self.durations}"
            )
        if self.loss == "pruned_tdt":
            check_pruned_durations(self.durations)
        if self.sigma < 0 or not 0 <= self.omega < 1:
            raise ValueError(f"need sigma >= 0 and 0 <= omega < 1, got {self.sigma}, {self.omega}")
        check_delay_penalty(self.delay_penalty)
        if self.delay_penalty != 0.0 and self.loss == "full" and self.clamp >= 0:
            raise ValueError(
                f"clamp={self.clamp} needs delay_penalty: 0 (the penalised full loss runs the "
                "mutual-information recursion, which has no gradient clamp); set clamp: -1"
            )
        if self.is_tdt and self.backend == "k2":
            raise ValueError("backend 'k2' has no TDT recursion: use auto, torch or triton")

    def check_backend(self) -> None:
        """Checks that the loss' recursion backend can run here: k2, an optional package, must
        import for ``backend: k2`` (imported now, not at module import). Training calls this
        before it builds anything; reading the config does not, because a model trained with
        k2 is rebuilt for decoding, where no loss runs, on machines without it.

        Raises:
            ValueError: ``backend: ...`` saying why it cannot run and what to use instead.
        """
        if not self.runs_mutual_information:  # no recursion that k2 could run
            return
        try:
            check_backend(self.backend)
        except ImportError as err:
            raise ValueError(f"backend: {err}") from None

    def check_tdt_fields(self) -> None:
        """Checks that a plain RNN-T loss (``full``, ``pruned``) is not given TDT settings
        (``durations``, ``sigma``, ``omega`` other than their defaults), which it would ignore:
        e.g. a base config's TDT durations under a ``--set heads.transducer.loss=pruned``.
        Training calls this before it builds anything; reading the config does not, so an
        experiment trained so is still rebuilt for decoding. Defaults are what every saved
        config holds, and mean nothing to those losses: they pass.

        Raises:
            ValueError: naming ``loss``, the field and both ways to make them agree.
        """
        if self.is_tdt:
            return
        defaults = TransducerConfig()
        for name in ("durations", "sigma", "omega"):
            value, default = getattr(self, name), getattr(defaults, name)
            if value != default:
                raise ValueError(
                    f"{name}: {list(value) if name == 'durations' else value} is a TDT setting, "
                    f"which loss: {self.loss} (plain RNN-T) ignores: set loss: tdt or "
                    f"pruned_tdt to train TDT with it, or {name}: "
                    f"{list(default) if name == 'durations' else default} (the default) for "
                    f"{self.loss}")

    @property
    def runs_mutual_information(self) -> bool:
        """Whether the RNN-T loss runs the mutual-information recursion (the only one with a
        k2 backend): ``pruned``, and ``full`` with a ``delay_penalty`` (torchaudio's otherwise)."""
        return self.loss == "pruned" or (self.loss == "full" and self.delay_penalty != 0.0)

    @property
    def is_tdt(self) -> bool:
        """Whether the head is a TDT model (joiner with duration logits): ``tdt``,
        ``pruned_tdt``."""
        return self.loss in ("tdt", "pruned_tdt")

    @property
    def is_pruned(self) -> bool:
        """Whether the loss is pruned (simple projections, band, warm-up)."""
        return self.loss in ("pruned", "pruned_tdt")


class TransducerHead(nn.Module):
    """Predictor + joiner (+ simple-loss projections for ``loss="pruned"``).

    Args:
        cfg: head configuration.
        enc_dim: encoder output size D.
        vocab_size: V including blank.
    """

    def __init__(self, cfg: TransducerConfig, enc_dim: int, vocab_size: int) -> None:
        super().__init__()
        if not 0 <= cfg.blank_id < vocab_size:
            raise ValueError(f"blank_id={cfg.blank_id} is outside the vocabulary of {vocab_size}")
        self.cfg = cfg
        self.vocab_size = vocab_size
        if cfg.predictor == "stateless":
            self.predictor: nn.Module = StatelessPredictor(
                vocab_size, cfg.pred_dim, cfg.context_size, cfg.blank_id
            )
        else:
            self.predictor = LstmPredictor(
                vocab_size,
                cfg.pred_dim,
                cfg.lstm_hidden_dim,
                cfg.lstm_num_layers,
                cfg.predictor_dropout,
            )
        num_durations = len(cfg.durations) if cfg.is_tdt else 0
        self.joiner = Joiner(
            enc_dim, cfg.pred_dim, cfg.joiner_dim, vocab_size, num_durations, cfg.joiner_activation
        )
        if cfg.is_pruned:  # the simple loss' trivial joiner (with duration logits for TDT)
            self.simple_am_proj = nn.Linear(enc_dim, vocab_size + num_durations)
            self.simple_lm_proj = nn.Linear(cfg.pred_dim, vocab_size + num_durations)

    @property
    def blank_id(self) -> int:
        return self.cfg.blank_id

    @property
    def durations(self) -> tuple[int, ...]:
        """Durations of the TDT duration logits; ``()`` for RNN-T heads."""
        return tuple(self.cfg.durations) if self.cfg.is_tdt else ()

    def loss_scales(self, step: int | None = None) -> tuple[float, float]:
        """``(simple_scale, pruned_scale)`` at training step ``step`` (see the module docstring;
        None: after the warm-up)."""
        warm = self.cfg.warm_step
        frac = 1.0 if warm == 0 or step is None else min(step / warm, 1.0)
        return 1.0 - frac * (1.0 - self.cfg.simple_loss_scale), 0.1 + 0.9 * frac

    def delay_penalty_at(self, step: int | None = None) -> float:
        """The symbol-delay penalty at training step ``step``: 0 before step ``2 * warm_step``,
        then ``delay_penalty`` (module docstring; None: after the warm-up)."""
        if step is not None and step < 2 * self.cfg.warm_step:
            return 0.0
        return self.cfg.delay_penalty

    def predict(self, tokens: Tensor) -> Tensor:
        """Predictor outputs for ``[blank] + tokens``: (B, U) -> (B, U + 1, P)."""
        state = self.predictor.init_state(tokens.shape[0], tokens.device)
        start = tokens.new_full((tokens.shape[0], 1), self.blank_id)  # also when U = 0
        pred, _ = self.predictor(torch.cat([start, tokens], dim=1), state)
        return pred

    def loss(
        self, enc: Tensor, enc_lens: Tensor, tokens: Tensor, token_lens: Tensor,
        step: int | None = None,
    ) -> LossOutput:
        """Transducer loss SUMMED over utterances.

        The tokens are blank-padded and checked against the vocabulary here, once per batch,
        before the predictor embeds them; the losses take them as checked (no second check and
        device sync).

        Args:
            enc: (B, T, D) encoder output. enc_lens: (B,) valid frames.
            tokens: (B, U), any padding value beyond ``token_lens`` (0, WeNet's ignore id -1).
            token_lens: (B,) valid tokens.
            step: training step of the pruned loss' warm-up (None: warmed up).

        Raises:
            ValueError: naming a token within ``token_lens`` outside ``[0, V)`` or equal to the
                blank.
        """
        enc = zero_padding(enc, enc_lens)  # padding garbage would reach the gradients (0 * nan)
        reserved = {self.blank_id: "the blank"}
        tokens = blank_padded_tokens(
            tokens, token_lens, self.blank_id, self.vocab_size, reserved=reserved
        )
        pred = self.predict(tokens)
        metrics: dict[str, float] = {}
        if self.cfg.is_pruned:
            per_utt = self._pruned_loss(enc, enc_lens, pred, tokens, token_lens, step, metrics)
        elif self.cfg.loss == "full":
            logits = self.joiner(enc, pred)
            per_utt = rnnt_loss(
                logits, tokens, enc_lens, token_lens, self.blank_id, self.cfg.clamp, "none",
                tokens_checked=True, delay_penalty=self.delay_penalty_at(step),
                backend=self.cfg.backend,
            )  # fmt: skip
            metrics["rnnt_loss"] = 0.0
        else:
            logits = self.joiner(enc, pred)
            per_utt = tdt_loss(
                logits,
                tokens,
                enc_lens,
                token_lens,
                self.cfg.durations,
                self.blank_id,
                self.cfg.sigma,
                "none",
                omega=self.cfg.omega,
                backend=self.cfg.backend,
                tokens_checked=True,
                delay_penalty=self.delay_penalty_at(step),
            )
            metrics["tdt_loss"] = 0.0
        finite = torch.isfinite(per_utt)
        loss = torch.where(finite, per_utt, torch.zeros_like(per_utt)).sum()
        for key in ("rnnt_loss", "tdt_loss"):
            if key in metrics:
                metrics[key] = float(loss.detach())
        metrics["num_infinite"] = float((~finite).sum())
        if not bool(finite.all()):
            logger.warning(
                "%d utterance(s) with infinite transducer loss dropped", int((~finite).sum())
            )
        return LossOutput(loss=loss, num_utterances=enc.shape[0], metrics=metrics)

    def _pruned_loss(
        self,
        enc: Tensor,
        enc_lens: Tensor,
        pred: Tensor,
        tokens: Tensor,
        token_lens: Tensor,
        step: int | None,
        metrics: dict[str, float],
    ) -> Tensor:
        """Per-utterance ``simple_scale * simple + pruned_scale * pruned`` (RNN-T or TDT);
        fills ``metrics``."""
        cfg = self.cfg
        am = self.simple_am_proj(enc)
        lm = self.simple_lm_proj(pred)
        smoothing = (cfg.lm_only_scale, cfg.am_only_scale, self.blank_id, cfg.backend, "none")
        if cfg.is_tdt:
            simple, (token_occ, blank_occ) = tdt_loss_simple(
                am, lm, tokens, enc_lens, token_lens, cfg.durations, *smoothing, return_grad=True,
                tokens_checked=True, delay_penalty=self.delay_penalty_at(step),
            )  # fmt: skip
            ranges = tdt_pruning_ranges(
                token_occ, blank_occ, enc_lens, token_lens, cfg.durations, cfg.prune_range
            )
        else:
            simple, (px_grad, py_grad) = rnnt_loss_simple(
                am, lm, tokens, enc_lens, token_lens, *smoothing, return_grad=True,
                tokens_checked=True, delay_penalty=self.delay_penalty_at(step),
            )  # fmt: skip
            ranges = get_pruning_ranges(px_grad, py_grad, enc_lens, token_lens, cfg.prune_range)
        enc_band, pred_band = do_rnnt_pruning(
            self.joiner.project_encoder(enc), self.joiner.project_predictor(pred), ranges
        )
        logits = self.joiner.join(enc_band, pred_band)  # (B, T, R, V (+ D))
        if cfg.is_tdt:
            pruned = tdt_loss_pruned(
                logits, tokens, ranges, enc_lens, token_lens, cfg.durations, self.blank_id,
                cfg.sigma, "none", omega=cfg.omega, backend=cfg.backend, tokens_checked=True,
                delay_penalty=self.delay_penalty_at(step),
            )  # fmt: skip
        else:
            pruned = rnnt_loss_pruned(
                logits, tokens, ranges, enc_lens, token_lens, self.blank_id, cfg.backend, "none",
                tokens_checked=True, delay_penalty=self.delay_penalty_at(step),
            )  # fmt: skip
        simple_scale, pruned_scale = self.loss_scales(step)
        finite = torch.isfinite(simple) & torch.isfinite(pruned)
        metrics["simple_loss"] = float(torch.where(finite, simple, 0.0).detach().sum())
        metrics["pruned_loss"] = float(torch.where(finite, pruned, 0.0).detach().sum())
        return simple_scale * simple + pruned_scale * pruned
