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

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asr.checkpoints.io import save_weights
from asr.checkpoints.selection import WeightSelection, select_weights
from asr.config import apply_overrides, from_dict, load_config, parse_override
from asr.data.config import DataConfig
from asr.decoding.config import SearchConfig
from asr.encoders import EncoderConfig, build_encoder
from asr.fileio import looked_for_here
from asr.model import ASRModel, HeadsConfig, build_heads
from asr.tokenizers import Tokenizer, load_tokenizer
from asr.tokenizers.base import check_vocabulary
from asr.train.optim import OptimConfig
from asr.train.state import TrainConfig

__all__ = [
    "CONFIG_FILE",
    "ExperimentConfig",
    "build_model",
    "check_checkpoint_vocabulary",
    "load_experiment_config",
    "load_trained_model",
    "relative_path_advice",
    "save_experiment_weights",
]

logger = logging.getLogger(__name__)

#: The resolved configuration ``asr train`` writes into every experiment directory.
CONFIG_FILE = "config.yaml"


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
        search: decoding options (beam size, LM, penalties) of every searcher: the dev WER
            during training, ``asr decode`` (``--set search.beam_size=8``) and the packages
            exported from the experiment.
    """

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer_dir: Path = Path("data/lang_bpe_500")
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)


def build_model(cfg: ExperimentConfig, vocab_size: int) -> ASRModel:
    """Builds the encoder and heads of ``cfg`` for a vocabulary of ``vocab_size`` (incl. blank).

    The feature dimension comes from ``cfg.data.fbank.num_mel_bins``: training and inference use
    the same :class:`asr.features.fbank.FbankConfig`.
    """
    encoder = build_encoder(cfg.encoder, cfg.data.fbank.num_mel_bins)
    heads, weights = build_heads(cfg.heads, encoder.output_dim, vocab_size)
    return ASRModel(encoder, heads, weights)


def load_experiment_config(
    exp_dir: str | Path,
    overrides: Iterable[str] = (),
    checkpoint: Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """The resolved config of an experiment, with ``--set`` overrides applied.

    Args:
        exp_dir: an ``asr train`` directory.
        overrides: ``a.b=c`` strings.
        checkpoint: a training checkpoint of the experiment: its embedded config (what those
            weights were trained with) is used when present, else ``exp_dir/config.yaml``.

    Raises:
        FileNotFoundError: when neither the checkpoint nor the directory holds a config.
        asr.config.ConfigError: naming the key that does not fit.
    """
    embedded = ((checkpoint or {}).get("extra") or {}).get("config")
    if isinstance(embedded, dict):
        return from_dict(ExperimentConfig, apply_overrides(embedded, overrides))
    path = Path(exp_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {exp_dir} an `asr train` directory?")
    return load_config(ExperimentConfig, path, overrides)


def relative_path_advice(exp_dir: str | Path, key: str, value: str | Path, fix: str,
                         overrides: Iterable[str] = ()) -> str:
    """What to do when the path ``value`` of the experiment's ``key`` is not found. A relative
    one of the experiment (what the recipe scripts train with, e.g. ``tokenizer_dir:
    data/lang_bpe_500``) is relative to the directory ``asr train`` ran in, and is read from the
    current directory; one that this command line gave (``overrides``: its ``--set
    KEY=VALUE``) is the user's own, read from the current directory, where it is not.

    Returns:
        ``" (...)"`` to append to the error: for the experiment's path, naming both
        directories and ``fix`` (the option that gives another path); for a ``--set`` path,
        naming the current directory; ``""`` for an absolute ``value`` or a directory that
        is there (:func:`asr.fileio.looked_for_here`).
    """
    if not looked_for_here(value):
        return ""
    if any(_gives_key(text, key) for text in overrides):
        return (f" ({key} {value} of this command line's --set is read from the current "
                f"directory {Path.cwd()}, which has no {value}: give a path from there, or an "
                f"absolute one)")
    return (f" ({key} {value} of {exp_dir} is relative to the directory `asr train` ran in, "
            f"and was looked for in the current directory {Path.cwd()}: run from the training's "
            f"directory (a recipe's --work-dir), or pass {fix})")


def _gives_key(override: str, key: str) -> bool:
    """Whether the ``--set`` string ``override`` gives the dotted ``key``: ``KEY=VALUE`` itself,
    or a section above it as a mapping that holds it (``data={manifest_dir: mine}`` gives
    ``data.manifest_dir``)."""
    keys, value = parse_override(override)
    path = key.split(".")
    if path[:len(keys)] != keys:
        return False
    for name in path[len(keys):]:
        if not isinstance(value, dict) or name not in value:
            return False
        value = value[name]
    return True


def save_experiment_weights(exp_dir: str | Path, state_dict: dict, output: str | Path,
                            tag: str) -> Path:
    """Writes ``state_dict`` as safetensors, each tensor in its own dtype (averages come in
    their checkpoints'), with the experiment's config YAML as metadata."""
    config = Path(exp_dir) / CONFIG_FILE
    metadata = {"tag": tag}
    if config.is_file():
        metadata["config"] = config.read_text(encoding="utf-8")
    save_weights(state_dict, output, metadata)
    return Path(output)


def check_checkpoint_vocabulary(checkpoint: Mapping[str, Any], tokenizer: Tokenizer,
                                tokenizer_dir: str | Path, source: str | Path) -> None:
    """Checks that the weights of the training checkpoint ``checkpoint`` (read from ``source``;
    ``{}`` for a weights file, which records no vocabulary) were trained on ``tokenizer``'s
    pieces (:func:`asr.tokenizers.base.check_vocabulary`).

    Raises:
        ValueError: naming ``source``, the tokenizer directory and the first id that differs.
    """
    extra = checkpoint.get("extra")
    trained = extra.get("tokens") if isinstance(extra, Mapping) else None
    try:
        check_vocabulary(trained, tokenizer, tokenizer_dir)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def load_trained_model(
    exp_dir: str | Path,
    selection: WeightSelection | None = None,
    overrides: Iterable[str] = (),
    device: torch.device | str = "cpu",
) -> tuple[ExperimentConfig, Tokenizer, ASRModel, str]:
    """Rebuilds the model of an ``asr train`` directory with the chosen weights, in eval mode.

    Returns:
        (config, tokenizer, model, tag): tag names the weights (e.g. ``epoch-8-avg-3``).
    """
    weights = select_weights(exp_dir, selection or WeightSelection())
    cfg = load_experiment_config(exp_dir, overrides, weights.checkpoint)
    try:
        tokenizer = load_tokenizer(cfg.tokenizer_dir)
    except FileNotFoundError as err:
        advice = relative_path_advice(exp_dir, "tokenizer_dir", cfg.tokenizer_dir,
                                      "--set tokenizer_dir=DIR", overrides)
        raise FileNotFoundError(f"{err}{advice}") from err
    check_checkpoint_vocabulary(weights.checkpoint, tokenizer, cfg.tokenizer_dir,
                                weights.sources[-1])
    model = build_model(cfg, tokenizer.vocab_size)
    reference = model.state_dict()
    model.load_state_dict({k: v.to(reference[k].dtype) if k in reference else v
                           for k, v in weights.state_dict.items()})
    model.to(device).eval()
    logger.info("loaded %s weights (%s) from %s", type(model).__name__, weights.tag, exp_dir)
    return cfg, tokenizer, model, weights.tag
