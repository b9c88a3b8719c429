"""Set-up prints nothing a user cannot act on: building the package (editable, as tools/setup.sh
installs it, and as a wheel) gives no setuptools warnings, and the wheel holds the web page."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The files a build reads, without caches or build outputs."""
    root = tmp_path_factory.mktemp("source")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "asr", root / "asr",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return root


@pytest.mark.parametrize("hook", ["build_editable", "build_wheel"])
def test_building_the_package_prints_no_warnings(source, tmp_path, hook):
    out = tmp_path / "dist"
    out.mkdir()
    code = f"from setuptools import build_meta; print(build_meta.{hook}({str(out)!r}))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=source, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr.lower(), proc.stderr
    wheel = out / proc.stdout.strip().splitlines()[-1]
    if hook == "build_wheel":
        names = zipfile.ZipFile(wheel).namelist()
        for page in ("index.html", "app.js", "recorder-worklet.js"):
            assert f"asr/serve/static/{page}" in names


def _setup_installs(tmp_path: Path, *args: str) -> str:
    """What tools/setup.sh ARGS asks apt-get for on a machine that has none of the Debian
    packages (a stub apt-get records it; the virtual environment is taken as up to date)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("bash", "dirname", "sha256sum", "cut", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    log = tmp_path / "apt.log"
    stubs = {"apt-get": f'echo "$@" >> {log}', "id": "echo 0"}  # as root: no sudo
    for name, body in stubs.items():
        (bin_dir / name).write_text(f'#!{shutil.which("bash")}\n{body}\n')
        (bin_dir / name).chmod(0o755)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin" / "python").write_text("")
    (venv / "bin" / "python").chmod(0o755)
    digest = subprocess.run("sha256sum setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1",
                            shell=True, cwd=REPO, capture_output=True, text=True, check=True)
    (venv / ".asr-setup-stamp").write_text(f"{digest.stdout.strip()} {REPO}\n")
    env = {"PATH": str(bin_dir), "ASR_VENV": str(venv), "HOME": str(tmp_path)}
    proc = subprocess.run([str(bin_dir / "bash"), str(REPO / "tools" / "setup.sh"), *args],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stderr
    return log.read_text() if log.exists() else ""


def test_browser_test_packages_are_installed_only_for_the_tests(tmp_path):
    training = _setup_installs(tmp_path / "train")
    assert "espeak-ng" in training and "sox" in training
    assert not {"chromium", "nodejs", "ffmpeg"} & set(training.split())
    testing = _setup_installs(tmp_path / "test", "--test-deps")
    assert {"chromium", "nodejs", "ffmpeg", "espeak-ng"} <= set(testing.split())
    assert "setup.sh --test-deps" in (REPO / "tools" / "test.sh").read_text()
