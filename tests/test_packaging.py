"""Set-up prints nothing a user cannot act on: building the package (editable, as tools/setup.sh
installs it, and as a wheel) gives no setuptools warnings, and the wheel holds the web page."""

from __future__ import annotations

import configparser
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


def _stub(path: Path, body: str) -> None:
    """An executable bash script at ``path`` that runs ``body``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!{shutil.which("bash")}\n{body}\n')
    path.chmod(0o755)


def _run_setup(tmp_path: Path, *args: str, python: str = "3.11") -> subprocess.CompletedProcess:
    """tools/setup.sh ARGS on a machine with stubs of apt-get (recording its arguments in
    ``apt.log``) and of the virtual environment's pip (in ``pip.log``) and python (version
    ``python``, made from ``/usr/bin/python<python>``)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("bash", "dirname", "sha256sum", "cut", "cat", "grep"):
        if not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(shutil.which(tool))
    _stub(bin_dir / "apt-get", f'echo "$@" >> {tmp_path / "apt.log"}')
    _stub(bin_dir / "id", "echo 0")  # as root: no sudo
    venv = tmp_path / "venv"
    _stub(venv / "bin" / "python", f'echo "python {python} from /usr/bin/python{python}"')
    _stub(venv / "bin" / "pip", f'echo "$@" >> {tmp_path / "pip.log"}')
    env = {"PATH": str(bin_dir), "ASR_VENV": str(venv), "HOME": str(tmp_path)}
    proc = subprocess.run([str(bin_dir / "bash"), str(REPO / "tools" / "setup.sh"), *args],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def _setup_installs(tmp_path: Path, *args: str) -> str:
    """What tools/setup.sh ARGS asks apt-get for on a machine that has none of the Debian
    packages (the virtual environment installed by a first run, up to date in the second)."""
    _run_setup(tmp_path, *args)
    (tmp_path / "apt.log").unlink(missing_ok=True)
    assert "up to date" in _run_setup(tmp_path, *args).stderr
    log = tmp_path / "apt.log"
    return log.read_text() if log.exists() else ""


def test_an_environment_made_again_from_another_python_is_installed_again(tmp_path):
    """The stamp of the last install named the dependency files and the checkout only: an
    environment made again from another Python (its interpreter gone), its site-packages empty,
    was "up to date"."""
    _run_setup(tmp_path)
    assert "-e .[dev]" in (tmp_path / "pip.log").read_text()
    (tmp_path / "pip.log").unlink()
    assert "up to date" in _run_setup(tmp_path).stderr
    assert not (tmp_path / "pip.log").exists()
    assert "installing asr" in _run_setup(tmp_path, python="3.12").stderr
    assert "-e .[dev]" in (tmp_path / "pip.log").read_text()
    stamp = (tmp_path / "venv/.asr-setup-stamp").read_text()
    assert "python 3.12 from /usr/bin/python3.12" in stamp


def test_browser_test_packages_are_installed_only_for_the_tests(tmp_path):
    training = _setup_installs(tmp_path / "train")
    assert "espeak-ng" in training and "sox" in training
    assert not {"chromium", "nodejs", "ffmpeg"} & set(training.split())
    testing = _setup_installs(tmp_path / "test", "--test-deps")
    assert {"chromium", "nodejs", "ffmpeg", "espeak-ng"} <= set(testing.split())
    assert "setup.sh --test-deps" in (REPO / "tools" / "test.sh").read_text()


def _test_command_runs(tmp_path: Path, *args: str, workers: str | None = None) -> str:
    """The pytest command line tools/test.sh ARGS runs (with ``ASR_TEST_WORKERS=workers`` when
    given), on the stubbed machine of :func:`_run_setup`: its venv's python prints its
    arguments."""
    _run_setup(tmp_path)
    _stub(tmp_path / "venv" / "bin" / "python",
          'if [ "$1" = -c ]; then echo "python 3.11 from /usr/bin/python3.11"; '
          'else echo "$@"; fi')
    bin_dir = tmp_path / "bin"
    env = {"PATH": str(bin_dir), "ASR_VENV": str(tmp_path / "venv"), "HOME": str(tmp_path)}
    if workers is not None:
        env["ASR_TEST_WORKERS"] = workers
    proc = subprocess.run([str(bin_dir / "bash"), str(REPO / "tools" / "test.sh"), *args],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_the_test_command_runs_the_suite_on_every_core_and_serially_when_asked(tmp_path):
    """Serial pytest used one of the two cores most of the time: the README's test command
    starts pytest-xdist workers (one per core), which the dev extra installs; a caller can ask
    for a serial run either way, and extra arguments still reach pytest."""
    dev = configparser.ConfigParser()
    dev.read(REPO / "setup.cfg")
    assert "pytest-xdist==3.8.0" in dev["options.extras_require"]["dev"].split()
    assert _test_command_runs(tmp_path / "a", "-m", "slow") == \
        "-m pytest -n auto --dist worksteal -m slow"
    assert _test_command_runs(tmp_path / "b", "tests/x.py", workers="0") == \
        "-m pytest -n 0 --dist worksteal tests/x.py"
    assert _test_command_runs(tmp_path / "c", "-p", "no:xdist") == "-m pytest -p no:xdist"
