"""The README's "Use it" commands run as written, against a tiny package, so the README cannot
drift from the code: its fenced blocks are extracted and run with the package, audio file and
experiment paths substituted (and the server on a free port)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import soundfile

from asr.audio import load_audio
from asr.testing.serving import stop_process
from asr.testing.tiny import espeak_available

pytestmark = pytest.mark.skipif(not espeak_available(), reason="needs espeak-ng")

REPO = Path(__file__).resolve().parents[2]
README_PACKAGE = "egs/mini_tts/ASR/exp/transformer_transducer/package"
_LISTENING = re.compile(r"serving on http://127\.0\.0\.1:(\d+)")
#: The commands run in a scratch directory and must import this checkout's asr.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}


def use_it_blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block of the README's "Use it" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Use it\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def setting(tiny_models_dir, tmp_path_factory, trained):
    """What the README's placeholders stand for: PKG, EXP and speech.flac; and what the Python
    API hears in speech.flac, plainly (``text``) and biased by the README's phrases
    (``biased``). What the tiny model hears depends on its training, so the commands' outputs
    are compared with the API's rather than with the sentence that was spoken."""
    import asr
    from asr.testing.packages import trained_tiny_package

    tiny = trained_tiny_package(tiny_models_dir)
    work = tmp_path_factory.mktemp("readme")
    soundfile.write(work / "speech.flac", load_audio(tiny.wavs[2]), 16000)
    model = asr.load_model(tiny.package_dir, search={"hotwords_score": 3.0})
    [plain] = model.transcribe([str(work / "speech.flac")])
    [biased] = model.transcribe([str(work / "speech.flac")], searcher="beam",
                                hotwords="GREEN APPLES;OPEN THE DOOR")
    assert plain.text and biased.text, "the tiny model hears nothing: comparing proves little"
    return {"package": str(tiny.package_dir), "exp": str(trained), "work": work,
            "text": plain.text, "biased": biased.text}


def _substitute(code: str, setting: dict) -> str:
    code = code.replace(README_PACKAGE, setting["package"])
    code = re.sub(r"\bPKG\b", setting["package"], code)
    return re.sub(r"\bEXP\b", setting["exp"], code)


def _command(line: str) -> list[str]:
    """A README shell line as argv: ``asr`` is the console script, ``python`` this interpreter."""
    argv = shlex.split(line, comments=True)
    if argv[0] == "asr":
        return [sys.executable, "-m", "asr.cli.main", *argv[1:]]
    assert argv[0] == "python", line
    return [sys.executable, *argv[1:]]


def test_the_section_has_every_use(setting):
    blocks = use_it_blocks()
    languages = [language for language, _ in blocks]
    assert languages.count("python") >= 1 and languages.count("bash") >= 2
    text = " ".join(code for _, code in blocks)
    for needed in ("asr transcribe", "asr.load_model", ".words", "streaming_recognizer",
                   "asr serve", "python -m asr.serve.client", "--microphone"):
        assert needed in text, needed


def test_python_blocks(setting):
    code = "\n".join(_substitute(c, setting) for lang, c in use_it_blocks() if lang == "python")
    proc = subprocess.run([sys.executable, "-c", code], cwd=setting["work"], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    words = setting["text"].split()
    assert lines[0].startswith(f"{setting['text']} [('{words[0]}', ")  # words with their times
    assert setting["text"] in " ".join(lines[1:])                        # streaming
    assert f"Word(text='{words[-1]}'" in lines[-1]


def test_shell_blocks(setting):
    server = None
    try:
        for language, code in use_it_blocks():
            if language != "bash":
                continue
            for line in _substitute(code, setting).splitlines():
                argv = _command(line)
                if argv[3:4] == ["serve"]:  # runs until stopped: on a free port, in the background
                    server = subprocess.Popen(argv + ["--port", "0"], cwd=setting["work"],
                                              env=ENV, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True)
                    port = _wait_listening(server)
                    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read()
                    assert b"<html" in page.lower()
                    continue
                if "asr.serve.client" in argv:
                    argv += ["--server", f"ws://127.0.0.1:{port}"]
                proc = subprocess.run(argv, cwd=setting["work"], env=ENV, capture_output=True,
                                      text=True, timeout=300)
                assert proc.returncode == 0, (line, proc.stderr)
                if "decode" not in argv:
                    text = setting["biased" if "--hotwords" in argv else "text"]
                    assert text in proc.stdout, (line, proc.stdout)
        assert server is not None
    finally:
        if server is not None:
            stop_process(server)


def _wait_listening(server: subprocess.Popen) -> int:
    for line in server.stdout:
        match = _LISTENING.search(line)
        if match:
            return int(match.group(1))
    raise AssertionError("asr serve did not start")
