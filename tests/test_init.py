"""The package's face (``asr/__init__.py``): its names, imported on first use."""

from __future__ import annotations

import subprocess
import sys

import asr
from asr.audio import AudioError
from asr.results import FailedInput, TranscriptionError


def test_the_face_has_the_types_a_transcribe_call_gives_and_raises():
    """``transcribe(on_error="return")`` gives FailedInput values and ``on_error="raise"``
    raises AudioError / TranscriptionError, none of which ``asr`` had, although its docstring
    said the result types were there."""
    assert asr.FailedInput is FailedInput
    assert asr.TranscriptionError is TranscriptionError
    assert asr.AudioError is AudioError
    assert {"FailedInput", "TranscriptionError", "AudioError"} <= set(asr.__all__)


def test_dir_lists_the_names_imported_on_first_use_without_importing_them():
    """``dir(asr)`` (tab completion) listed submodules but not ``load_model`` or the types."""
    code = ("import sys, asr; names = dir(asr)\n"
            "print(all(n in names for n in asr.__all__), 'asr.runtime.offline' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["True", "False"]
