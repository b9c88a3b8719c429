"""Random-weight packages and their ONNX exports, made once per test session.

Several modules prove different things of the same graphs (sherpa-onnx decodes them, the int8
graphs keep their metadata, the self-check refuses a wrong graph over an earlier export): one
export per layout serves them all. The export directories are read-only to the tests; a test that
writes over an export copies it first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from asr.export import export_onnx
from asr.export.sherpa import ExportReport
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
def random_packages(tmp_path_factory) -> dict[str, Path]:
    """head -> package: a random-weight transducer (with a CTC head) and a TDT."""
    root = tmp_path_factory.mktemp("random_packages")
    return {"transducer": random_package(root / "rnnt", head="transducer", seed=2),
            "tdt": random_package(root / "tdt", head="tdt", seed=3)}


@pytest.fixture(scope="session")
def random_exports(random_packages, tmp_path_factory) -> dict[str, tuple[Path, Path, ExportReport]]:
    """layout name -> (package, export directory, report): every layout of
    :data:`EXPORT_LAYOUTS` exported with ``int8=True`` (fp32 and int8 graphs side by side)."""
    root = tmp_path_factory.mktemp("random_exports")
    out = {}
    for name, (head, options) in EXPORT_LAYOUTS.items():
        source = random_packages[head]
        out[name] = (source, root / f"onnx-{name}",
                     export_onnx(source, root / f"onnx-{name}", int8=True, **options))
    return out
