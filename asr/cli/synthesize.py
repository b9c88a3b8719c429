"""``asr synthesize``: write a synthetic LibriSpeech-layout corpus (see :mod:`local.synthesize`)."""

from __future__ import annotations

import argparse
import logging

from local.synthesize import HELP, add_arguments
from local.synthesize import run as _run

__all__ = ["HELP", "add_arguments", "run"]

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    """Synthesize the corpus; configuration errors are reported without a traceback (exit 2)."""
    try:
        return _run(args)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        logger.error("asr synthesize: %s", err)
        return 2
