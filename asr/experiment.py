"""One experiment = one YAML file: data, tokenizer, encoder, heads, optimiser and training loop.

:class:`ExperimentConfig` is the root of every ``recipes/<corpus>/<model>.yaml``; the resolved
config is saved as ``config.yaml`` in the experiment directory and inside every checkpoint, so
a model can always be rebuilt from what training wrote (:func:`build_model`).

Example:
    >>> cfg = load_config(ExperimentConfig, "recipes/mini_tts/conformer_transducer.yaml",
    ...                   overrides=["train.max_epochs=2"])
    >>> tokenizer = load_tokenizer(cfg.tokenizer_dir)
    >>> model = build_model(cfg, tokenizer.vocab_size)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from asr.data.config import DataConfig
from asr.encoders.base import EncoderConfig, build_encoder
from asr.model import ASRModel, HeadsConfig, build_heads
from asr.train.optim import OptimConfig
from asr.train.state import TrainConfig

__all__ = ["ExperimentConfig", "build_model"]


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one training run needs.

    Attributes:
        data: manifests, batching, augmentation and fbank options.
        tokenizer_dir: directory written by ``asr bpe`` (``bpe.model``) or a char tokenizer
            (``tokens.txt``); its vocabulary size fixes the heads' output size.
        encoder: Conformer / Transformer options.
        heads: which heads sit on the encoder and their loss weights.
        optim: optimiser and learning-rate schedule.
        train: loop length, checkpoints, averaging, AMP, device.
    """

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer_dir: Path = Path("data/lang_bpe_500")
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_model(cfg: ExperimentConfig, vocab_size: int) -> ASRModel:
    """Builds the encoder and heads of ``cfg`` for a vocabulary of ``vocab_size`` (incl. blank).

    The feature dimension comes from ``cfg.data.fbank.num_mel_bins``: training and inference use
    the same :class:`asr.features.fbank.FbankConfig`.
    """
    encoder = build_encoder(cfg.encoder, cfg.data.fbank.num_mel_bins)
    heads, weights = build_heads(cfg.heads, encoder.output_dim, vocab_size)
    return ASRModel(encoder, heads, weights)
