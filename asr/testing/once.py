"""Test set-ups made once per folder, whichever process asks first.

The pytest-xdist workers of one test run are separate processes, each with its own session
fixtures: an expensive set-up (a trained tiny model, a set of ONNX exports) kept in a folder they
share is made by the first worker that asks and read by the others. :func:`made_once` holds an
exclusive ``flock`` on ``<folder>.lock`` while it makes the folder, so a second process waits for
the first one's result instead of making it again; the kernel releases the lock of a killed
process, and a folder it left half made (no ``made.json``) is made again.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asr.fileio import write_text_atomic

__all__ = ["MADE_FILE", "made_once"]

#: written last into a made folder: what its maker returned, as JSON
MADE_FILE = "made.json"


def made_once(folder: str | Path, make: Callable[[Path], Any]) -> Any:
    """What ``make(folder)`` returned when the folder was made, making it if no process has.

    Args:
        folder: where ``make`` writes; removed first when a killed maker left it half made.
        make: builds the folder's contents; returns a JSON-serializable value (paths as str).

    Returns:
        The value ``make`` returned, read back from ``folder/made.json`` (a JSON round trip:
        tuples come back as lists).
    """
    folder = Path(folder)
    made = folder / MADE_FILE
    folder.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder.with_name(f"{folder.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another process makes it
        if not made.exists():
            shutil.rmtree(folder, ignore_errors=True)
            value = make(folder)
            folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(made, json.dumps(value))
        return json.loads(made.read_text())
    finally:
        os.close(fd)  # releases the lock
