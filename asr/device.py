"""The one rule that turns a device name into a ``torch.device``: ``--device`` of every command
that runs a model (``asr decode``, ``asr transcribe``, ``asr serve``), the ``device=`` of
:func:`asr.load_model`, and the early check of a recipe's decode options (``asr train
--check-only --decode-arg``, which loads no runtime). Every caller imports it from here.
"""

from __future__ import annotations

import torch

__all__ = ["DEVICE_HELP", "resolve_device"]

#: The device names :func:`resolve_device` takes, for help texts and messages.
DEVICE_HELP = "auto (cuda when a GPU is available, else cpu), cpu, cuda, cuda:1, ..."


def resolve_device(device: torch.device | str) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is available, else ``cpu``; other names as torch reads
    them.

    Raises:
        ValueError: for a name torch does not know, or a CUDA device without a usable GPU.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(str(device))
        except RuntimeError as err:
            raise ValueError(f"device {device!r}: not a torch device ({DEVICE_HELP})") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device}: no CUDA GPU is available here; use cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    return resolved
