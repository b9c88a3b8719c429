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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from asr.data.config import DataConfig
from asr.decoding.config import SearchConfig
from asr.encoders import EncoderConfig, build_encoder
from asr.model import ASRModel, HeadsConfig, build_heads
from asr.train.optim import OptimConfig
from asr.train.state import TrainConfig

__all__ = [
    "ExperimentConfig",
    "WeightSelection",
    "build_model",
    "load_experiment_config",
    "load_trained_model",
    "load_weights_for",
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


def load_experiment_config(exp_dir: str | Path, overrides=()) -> ExperimentConfig:
    """The resolved config ``asr train`` saved in ``exp_dir/config.yaml`` (plus overrides)."""
    from asr.config import load_config

    path = Path(exp_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {exp_dir} an `asr train` directory?")
    return load_config(ExperimentConfig, path, overrides)


@dataclass(frozen=True)
class WeightSelection:
    """Which weights of an experiment directory to use.

    Exactly one way: ``checkpoint`` (a ``.pt`` training checkpoint or ``.safetensors`` weights),
    ``epoch`` with ``avg`` (average of ``epoch-(epoch-avg+1).pt .. epoch-<epoch>.pt``, or with
    ``use_averaged_model`` the running average over those epochs' steps), ``last`` (average of
    the newest ``last`` step checkpoints), or nothing: the newest ``checkpoint-N.pt``.
    """

    epoch: int | None = None
    avg: int = 1
    last: int | None = None
    checkpoint: Path | None = None
    use_averaged_model: bool = False

    def __post_init__(self) -> None:
        ways = sum(x is not None for x in (self.epoch, self.last, self.checkpoint))
        if ways > 1:
            raise ValueError("choose one of --epoch/--avg, --last and --checkpoint")
        if self.use_averaged_model and self.epoch is None:
            raise ValueError("--use-averaged-model needs --epoch (and --avg)")
        if self.avg != 1 and self.epoch is None:
            raise ValueError("--avg needs --epoch")

    def is_default(self) -> bool:
        return self.epoch is None and self.last is None and self.checkpoint is None


def load_weights_for(exp_dir: str | Path, selection: WeightSelection) -> tuple[dict, str]:
    """Model state dict chosen by ``selection`` in ``exp_dir`` and a tag describing it.

    Raises:
        FileNotFoundError: naming missing checkpoints.
        ValueError: for an inconsistent selection.
    """
    from asr.checkpoints import averaging
    from asr.checkpoints.io import latest_checkpoint, read_model_weights

    exp_dir = Path(exp_dir)
    if selection.checkpoint is not None:
        path = Path(selection.checkpoint)
        return read_model_weights(path)[0], path.stem
    if selection.epoch is not None:
        epoch, avg = selection.epoch, selection.avg
        if selection.use_averaged_model:
            return averaging.averaged_model_between(exp_dir, epoch, avg), \
                f"epoch-{epoch}-avg-{avg}-use-averaged-model"
        paths = averaging.epoch_checkpoints(exp_dir, epoch, avg)
        return averaging.average_checkpoints(paths), f"epoch-{epoch}-avg-{avg}"
    if selection.last is not None:
        paths = averaging.last_step_checkpoints(exp_dir, selection.last)
        return averaging.average_checkpoints(paths), f"last-{selection.last}-{paths[-1].stem}"
    path = latest_checkpoint(exp_dir)
    if path is None:
        raise FileNotFoundError(f"{exp_dir} holds no checkpoint-N.pt")
    return read_model_weights(path)[0], path.stem


def save_experiment_weights(exp_dir: str | Path, state_dict: dict, output: str | Path,
                            tag: str) -> Path:
    """Writes ``state_dict`` as safetensors with the experiment's config YAML as metadata."""
    from asr.checkpoints.io import save_weights

    config = Path(exp_dir) / CONFIG_FILE
    metadata = {"tag": tag}
    if config.is_file():
        metadata["config"] = config.read_text(encoding="utf-8")
    # Averaging works in float64; store the model's own float32.
    tensors = {k: (v.float() if v.dtype == torch.float64 else v) for k, v in state_dict.items()}
    save_weights(tensors, output, metadata)
    return Path(output)


def load_trained_model(
    exp_dir: str | Path,
    selection: WeightSelection | None = None,
    overrides=(),
    device: torch.device | str = "cpu",
):
    """Rebuilds the model of an ``asr train`` directory with the chosen weights, in eval mode.

    Returns:
        (config, tokenizer, model, tag): tag names the weights (e.g. ``epoch-8-avg-3``).
    """
    from asr.tokenizers import load_tokenizer

    cfg = load_experiment_config(exp_dir, overrides)
    tokenizer = load_tokenizer(cfg.tokenizer_dir)
    model = build_model(cfg, tokenizer.vocab_size)
    state_dict, tag = load_weights_for(exp_dir, selection or WeightSelection())
    state_dict = {k: v.to(model.state_dict()[k].dtype) if k in model.state_dict() else v
                  for k, v in state_dict.items()}
    model.load_state_dict(state_dict)
    model.to(device).eval()
    logger.info("loaded %s weights (%s) from %s", type(model).__name__, tag, exp_dir)
    return cfg, tokenizer, model, tag
