"""Model packages for tests: a trained tiny CTC model (cached per process) and random-weight ones.

``trained_tiny_package(root)`` trains :func:`asr.testing.tiny.train_tiny_experiment` once per
process (about 10-20 s on 2 CPU cores) and exports it; later calls return the cached result, so
test modules share it through their own session fixtures.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from asr.checkpoints.io import checkpoint_path, link_epoch_checkpoint
from asr.config import save_config, to_dict
from asr.experiment import CONFIG_FILE, build_model
from asr.package import export_package
from asr.testing.tiny import TINY_SENTENCES, tiny_config, train_tiny_experiment
from asr.tokenizers.bpe import train_bpe
from asr.tokenizers.char import build_char_tokenizer

__all__ = ["TinyPackage", "random_package", "trained_tiny_package"]

_LOCK = threading.Lock()
_CACHE: dict[tuple[str, str, int], TinyPackage] = {}


@dataclass(frozen=True)
class TinyPackage:
    """A packaged tiny model.

    Attributes:
        package_dir: the package.
        exp_dir: the experiment it was exported from.
        wavs: training wavs (22.05 kHz espeak-ng output), one per sentence.
        texts: their transcripts.
    """

    package_dir: Path
    exp_dir: Path
    wavs: tuple[Path, ...]
    texts: tuple[str, ...]


def trained_tiny_package(root: str | Path, head: str = "ctc", steps: int = 300) -> TinyPackage:
    """Trains (once per process and arguments) and exports a tiny model under ``root``."""
    key = (str(root), head, steps)
    with _LOCK:
        if key not in _CACHE:
            work = Path(root) / f"tiny_{head}_{steps}"
            exp = train_tiny_experiment(work, TINY_SENTENCES, head=head, steps=steps)
            package_dir = work / "package"
            export_package(exp.exp_dir, package_dir, overwrite=True)
            _CACHE[key] = TinyPackage(package_dir, exp.exp_dir, exp.wavs, exp.texts)
        return _CACHE[key]


def random_experiment(
    root: str | Path, head: str = "ctc", num_epochs: int = 1, seed: int = 0,
    bpe_vocab_size: int = 0, **config_kwargs,
) -> Path:
    """An experiment directory with ``num_epochs`` random-weight epoch checkpoints (no training),
    laid out as the trainer lays them out: ``checkpoint-<epoch>.pt`` and its hard link
    ``epoch-<epoch>.pt``. ``bpe_vocab_size > 0``: a BPE tokenizer of that size in place of the
    char one (both of :data:`TINY_SENTENCES`).

    Returns:
        The experiment directory (``config.yaml``, ``epoch-1.pt`` ...); the char tokenizer of
        :data:`TINY_SENTENCES` is in ``root/tokenizer``.
    """
    root = Path(root)
    if bpe_vocab_size:
        texts = list(TINY_SENTENCES) * 30  # repeated: the BPE model the tests were written with
        tokenizer = train_bpe(texts, root / "tokenizer", bpe_vocab_size, force=True)
    else:
        tokenizer = build_char_tokenizer(TINY_SENTENCES)
        tokenizer.save(root / "tokenizer")
    cfg = tiny_config(root / "tokenizer", head=head, **config_kwargs)
    exp_dir = root / "exp"
    exp_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, exp_dir / CONFIG_FILE)
    torch.manual_seed(seed)
    for epoch in range(1, num_epochs + 1):
        model = build_model(cfg, tokenizer.vocab_size)
        checkpoint = {
            "model": model.state_dict(),
            "extra": {"config": to_dict(cfg)},
            "progress": {"history": [{"epoch": epoch, "train_loss": 1.0, "valid_wer": 50.0 - epoch}]},
        }
        path = checkpoint_path(exp_dir, epoch)
        torch.save(checkpoint, path)
        link_epoch_checkpoint(path, epoch)
    return exp_dir


def random_package(root: str | Path, head: str = "ctc", seed: int = 0, **config_kwargs) -> Path:
    """A package of a random-weight tiny model (for tests that need no trained weights)."""
    exp_dir = random_experiment(root, head=head, seed=seed, **config_kwargs)
    package_dir = Path(root) / "package"
    export_package(exp_dir, package_dir, overwrite=True)
    return package_dir
