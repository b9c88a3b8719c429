"""Shared piece of the Triton interpreter tests (imported by name, as tests/decoding/
search_helpers.py is).

``TRITON_INTERPRET=1`` must be set before triton is first imported, and the default test run
imports modules in any order, so each such test runs its own file as a script in a fresh
subprocess with the variable set, and reads back the JSON line it prints last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_in_interpreter(script: str) -> dict:
    """Runs ``script`` (a path) with Triton's interpreter on; returns its last stdout line as
    JSON."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
