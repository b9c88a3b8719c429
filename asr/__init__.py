"""asr: end-to-end speech recognition with CTC, transducer (full, pruned, TDT), AED and CIF heads.

``asr.load_model(package_dir)`` returns a :class:`asr.inference.Transcriber`; it is imported
lazily so that ``import asr`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from asr.inference import load_model

        return load_model
    raise AttributeError(f"module 'asr' has no attribute {name!r}")
