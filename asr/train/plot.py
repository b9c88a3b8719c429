"""The training curve PNG: train/valid loss per epoch and dev WER on a second axis."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from asr.fileio import write_atomic
from asr.train.state import EpochRecord


def plot_history(history: Sequence[EpochRecord], path: str | Path) -> Path | None:
    """Writes ``path`` (PNG) from per-epoch records; returns None when there is nothing to plot."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(epochs, [r.train_loss for r in history], "o-", label="train loss")
    valid = [(r.epoch, r.valid_loss) for r in history if r.valid_loss is not None]
    if valid:
        ax.plot(*zip(*valid), "s-", label="valid loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per utterance")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    wer = [(r.epoch, r.valid_wer) for r in history if r.valid_wer is not None]
    if wer:
        ax2 = ax.twinx()
        ax2.plot(*zip(*wer), "^--", color="tab:red", label="dev WER (%)")
        ax2.set_ylabel("WER (%)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right")
    ax.set_title("training progress")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path
