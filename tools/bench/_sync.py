"""Waiting for a device before reading a timer: CUDA runs kernels asynchronously, so a timer
read right after a call would time their launch only."""

from __future__ import annotations

from collections.abc import Callable

import torch


def no_sync() -> None:
    """Nothing to wait for: CPU work is done when the call returns."""


def device_sync(device: str | torch.device) -> Callable[[], None]:
    """What waits for ``device``'s queued work: ``torch.cuda.synchronize`` on CUDA, else
    nothing."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else no_sync
