"""asr: end-to-end speech recognition with CTC, transducer (full, pruned, TDT), AED and CIF heads.

The package's face: ``asr.load_model(package_dir)`` returns a
:class:`asr.runtime.offline.Transcriber`; :class:`asr.runtime.streaming.StreamingRecognizer`,
the result types of :mod:`asr.results` (``TranscriptionResult``, ``Segment``, ``Word``,
``FailedInput``) and the errors ``transcribe`` raises (``AudioError``, ``TranscriptionError``)
are here too. They are imported on first use (and listed by ``dir(asr)``), so that
``import asr`` (and ``asr --help``) stays cheap; this module is the one declared exception to the
rule that imports sit at the top of a file (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import importlib
from typing import Any

from asr.version import __version__

#: public name -> the module that defines it.
_EXPORTS = {
    "load_model": "asr.runtime.offline",
    "Transcriber": "asr.runtime.offline",
    "StreamingRecognizer": "asr.runtime.streaming",
    "TranscriptionResult": "asr.results",
    "Segment": "asr.results",
    "Word": "asr.results",
    "FailedInput": "asr.results",
    "TranscriptionError": "asr.results",
    "AudioError": "asr.audio",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'asr' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names and the public ones imported on first use (tab completion)."""
    return sorted({*globals(), *_EXPORTS})
