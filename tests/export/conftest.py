"""Random-weight packages and their ONNX exports, made once per test run (by the first
pytest-xdist worker that asks, :func:`asr.testing.once.made_once`; the others read them).

Several modules prove different things of the same graphs (sherpa-onnx decodes them, the int8
graphs keep their metadata, the self-check refuses a wrong graph over an earlier export): one
export per layout serves them all. The export directories are read-only to the tests; a test that
writes over an export copies it first.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from asr.export import export_onnx
from asr.export.sherpa import ExportReport
from asr.testing.once import made_once
from asr.testing.packages import random_package

#: layout name -> (package, export options) of :func:`random_exports`.
EXPORT_LAYOUTS = {
    "offline": ("transducer", {}),
    "ctc": ("transducer", {"head": "ctc"}),
    "tdt": ("tdt", {}),
    "streaming": ("transducer", {"streaming": True}),
}


@pytest.fixture(scope="session")
def export_layouts() -> dict[str, tuple[str, dict]]:
    """:data:`EXPORT_LAYOUTS`, for tests that export a layout again."""
    return EXPORT_LAYOUTS


@pytest.fixture(scope="session")
def random_packages(run_tmp_path) -> dict[str, Path]:
    """head -> package: a random-weight transducer (with a CTC head) and a TDT."""
    def make(root: Path) -> dict[str, str]:
        return {"transducer": str(random_package(root / "rnnt", head="transducer", seed=2)),
                "tdt": str(random_package(root / "tdt", head="tdt", seed=3))}

    return {head: Path(package)
            for head, package in made_once(run_tmp_path / "random_packages", make).items()}


@pytest.fixture(scope="session")
def random_exports(random_packages, run_tmp_path) -> dict[str, tuple[Path, Path, ExportReport]]:
    """layout name -> (package, export directory, report): every layout of
    :data:`EXPORT_LAYOUTS` exported with ``int8=True`` (fp32 and int8 graphs side by side)."""
    def make(root: Path) -> dict[str, dict]:
        reports = {}
        for name, (head, options) in EXPORT_LAYOUTS.items():
            report = export_onnx(random_packages[head], root / f"onnx-{name}", int8=True,
                                 **options)
            reports[name] = {**asdict(report), "out_dir": str(report.out_dir)}
        return reports

    out = {}
    for name, fields in made_once(run_tmp_path / "random_exports", make).items():
        report = ExportReport(**{**fields, "out_dir": Path(fields["out_dir"])})
        out[name] = (random_packages[EXPORT_LAYOUTS[name][0]], report.out_dir, report)
    return out
