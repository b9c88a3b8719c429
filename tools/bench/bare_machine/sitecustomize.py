"""Makes this Python look like the GPU machine's: only what that machine has can be imported.

Put this folder first on ``PYTHONPATH`` (``tests/test_gpu_check.py`` does, for the dry run of
``tools/gpu_check.sh``); Python then imports this module at start-up. The GPU machine has Python
with torch, torchaudio, triton, numpy, sentencepiece, safetensors and tensorboard (and so what
they require), and the check brings the wheels of ``tools/gpu_check_wheels.txt``. Any other
third-party module that is installed here (lhotse, scipy, soundfile, matplotlib, ...) fails to
import with ``ModuleNotFoundError``, so a dry run that passes shows that the check imports
nothing the GPU machine lacks. Standard-library modules, modules outside this interpreter's
site-packages (the repository: ``asr``, ``tests``) and those of ``ASR_BARE_MACHINE_EXTRA``
(comma-separated distribution names) stay importable. ``importlib.metadata.distributions()`` (what
pytest's plugin loading walks for entry points) lists only the allowed distributions of this
interpreter's site-packages: a pytest plugin installed here but absent there (pytest-xdist, a dev
dependency) would otherwise be loaded and fail to import; ``distribution(name)`` still answers.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
import sysconfig
from pathlib import Path

#: What the GPU machine has (pip assumed; without it the check unpacks the wheels itself).
MACHINE = ("torch", "torchaudio", "triton", "numpy", "sentencepiece", "safetensors",
           "tensorboard", "pip")
WHEELS = Path(__file__).resolve().parents[2] / "gpu_check_wheels.txt"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _required(dist: importlib.metadata.Distribution) -> list[str]:
    """Names of the distributions ``dist`` requires here (markers evaluated, extras left out)."""
    from packaging.requirements import Requirement

    names = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        names.append(_norm(req.name))
    return names


def _allowed_distributions() -> set[str]:
    wanted = [_norm(n) for n in MACHINE]
    if WHEELS.is_file():
        for line in WHEELS.read_text(encoding="utf-8").splitlines():
            line = line.split("#")[0].strip()
            if line:
                wanted.append(_norm(re.split(r"[=<>!~ \[;]", line)[0]))
    wanted += [_norm(n) for n in os.environ.get("ASR_BARE_MACHINE_EXTRA", "").split(",") if n]
    allowed: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in allowed:
            continue
        allowed.add(name)
        try:
            wanted.extend(_required(importlib.metadata.distribution(name)))
        except importlib.metadata.PackageNotFoundError:
            pass
    return allowed


class _HidingFinder:
    """Wraps the path-entry finder of a site-packages folder: top-level modules of distributions
    that are not allowed are not found there (as on a machine without them; ``find_spec`` then
    answers None, which is what optional-import probes such as torch's expect)."""

    def __init__(self, inner, allowed_modules: set[str]) -> None:
        self.inner = inner
        self.allowed = allowed_modules

    def find_spec(self, fullname, target=None):
        if "." not in fullname and fullname not in self.allowed:
            return None
        return self.inner.find_spec(fullname, target)

    def invalidate_caches(self) -> None:
        self.inner.invalidate_caches()

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _install() -> None:
    allowed = _allowed_distributions()
    modules = {
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if any(_norm(d) in allowed for d in dists)
    }
    paths = sysconfig.get_paths()
    sites = {paths["purelib"], paths["platlib"]}
    for site in sites:
        inner = sys.path_importer_cache.get(site) or _path_finder(site)
        sys.path_importer_cache[site] = _HidingFinder(inner, modules)
    _hide_distributions(allowed, sites)


def _hide_distributions(allowed: set[str], sites: set[str]) -> None:
    """``importlib.metadata.distributions()`` leaves out the distributions of ``sites`` that are
    not ``allowed`` (those outside them, such as the editable repository's, are kept)."""
    listed = importlib.metadata.distributions
    resolved = {str(Path(site).resolve()) for site in sites}

    def distributions(**kwargs):
        for dist in listed(**kwargs):
            where = getattr(dist, "_path", None)
            hidden = (where is not None and str(Path(where).resolve().parent) in resolved
                      and _norm(dist.metadata["Name"] or "") not in allowed)
            if not hidden:
                yield dist

    importlib.metadata.distributions = distributions


def _path_finder(path: str):
    for hook in sys.path_hooks:
        try:
            return hook(path)
        except ImportError:
            continue
    raise ImportError(f"no path hook for {path}")


_install()
