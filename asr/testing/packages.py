"""Model packages for tests: a trained tiny CTC model (made once per folder), random-weight ones,
and a hand-built one whose searches' outcome is known.

``trained_tiny_package(root)`` trains :func:`asr.testing.tiny.train_tiny_experiment` once per
``root`` (about 10-20 s on 2 CPU cores) and exports it; later calls, in this process or in another
one (the pytest-xdist workers of one test run share a root), return the made package, so test
modules share it through their own session fixtures. What a trained model hears depends
on weights trained on the machine; :func:`constant_ctc_package` hears nothing but what its
search is biased toward, on any machine.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from asr.checkpoints.io import (
    checkpoint_path,
    link_epoch_checkpoint,
    safe_torch_load,
)
from asr.config import save_config, to_dict
from asr.experiment import CONFIG_FILE, build_model
from asr.package import export_package
from asr.testing.once import made_once
from asr.testing.tiny import TINY_SENTENCES, tiny_config, train_tiny_experiment
from asr.tokenizers.base import BLANK_ID
from asr.tokenizers.bpe import train_bpe
from asr.tokenizers.char import build_char_tokenizer

__all__ = ["TinyPackage", "constant_ctc_package", "random_package", "trained_tiny_package"]

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
    """Trains (once per ``root`` and arguments, however many processes ask:
    :func:`asr.testing.once.made_once`) and exports a tiny model under
    ``root/tiny_<head>_<steps>``."""
    key = (str(root), head, steps)
    with _LOCK:
        if key not in _CACHE:
            def make(work: Path) -> dict:
                exp = train_tiny_experiment(work, TINY_SENTENCES, head=head, steps=steps)
                export_package(exp.exp_dir, work / "package", overwrite=True)
                return {"package_dir": str(work / "package"), "exp_dir": str(exp.exp_dir),
                        "wavs": [str(w) for w in exp.wavs], "texts": list(exp.texts)}

            made = made_once(Path(root) / f"tiny_{head}_{steps}", make)
            _CACHE[key] = TinyPackage(Path(made["package_dir"]), Path(made["exp_dir"]),
                                      tuple(Path(w) for w in made["wavs"]),
                                      tuple(made["texts"]))
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
            "progress": {
                "history": [{"epoch": epoch, "train_loss": 1.0, "valid_wer": 50.0 - epoch}],
            },
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


def constant_ctc_package(root: str | Path, blank_logit: float = 6.0) -> Path:
    """A package of the tiny CTC model (the char tokenizer of :data:`TINY_SENTENCES`, 20 ids)
    whose CTC head ignores the encoder: its weight is zero and its bias ``blank_logit`` for
    blank and 0 for every other id, so every frame's logits are exactly those, whatever the
    audio and the machine.

    What a search finds is then known from the search alone: a plain search hears nothing
    (blank wins every frame), and a prefix beam search biased toward phrases by more than
    ``blank_logit`` per token (with ``search.hotwords_unboosted_prefix: 0``, and
    ``search.beam_size`` at least 20, so that no id is left out of a frame's candidates by a
    tie) hears whole copies of its phrases, as many as the frames hold, and nothing else.
    """
    exp_dir = random_experiment(root, head="ctc")
    path = checkpoint_path(exp_dir, 1)
    checkpoint = safe_torch_load(path)  # weights only, as every checkpoint is read
    weights = checkpoint["model"]
    weights["heads.ctc.output.weight"].zero_()
    weights["heads.ctc.output.bias"].zero_()
    weights["heads.ctc.output.bias"][BLANK_ID] = blank_logit
    torch.save(checkpoint, path)  # rewritten in place: epoch-1.pt, its hard link, sees it too
    package_dir = Path(root) / "package"
    export_package(exp_dir, package_dir, overwrite=True)
    return package_dir
