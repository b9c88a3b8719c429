"""The import rules of docs/ARCHITECTURE.md hold for asr/, the checker catches each broken rule,
and the page's layer table, optional backends and lists of biasing and streaming searchers are
the code's."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location(
        "check_imports", ROOT / "tools" / "check_imports.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


check = _checker()


def test_the_package_keeps_its_floors():
    assert check.violations(ROOT) == []
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "check_imports.py")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "0 violation(s)" in result.stderr


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"asr/types.py": "from asr.model import ASRModel\n", "asr/model.py": ""},
         r"asr\.types:1: imports asr\.model from a higher layer \('foundation' -> 'model'\)"),
        ({"asr/encoders/a.py": "import asr.encoders.b\n",
          "asr/encoders/b.py": "import asr.encoders.a\n",
          "asr/encoders/__init__.py": ""},
         r"import cycle: asr\.encoders\.a <-> asr\.encoders\.b"),
        ({"asr/encoders/a.py": "def f():\n    from asr.encoders import b\n",
          "asr/encoders/b.py": "",
          "asr/encoders/__init__.py": ""},
         r"asr\.encoders\.a:2: imports asr\.encoders\.b inside a function"),
        ({"asr/model.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                          "    from asr.run.train import x\n", "asr/run/__init__.py": "",
          "asr/run/train.py": ""},
         r"asr\.model:3: imports asr\.run\.train from a higher layer"),
        ({"asr/newthing.py": ""}, r"asr\.newthing: in no layer"),
        ({"asr/model.py": "from asr import load_model\n", "asr/__init__.py": ""},
         r"asr\.model:1: imports the facade"),
    ],
)
def test_each_broken_rule_is_reported(tmp_path, files, expected):
    problems = check.violations(_tree(tmp_path, files))
    assert any(re.search(expected, p) for p in problems), problems


def test_optional_backends_may_be_imported_where_used(tmp_path):
    root = _tree(tmp_path, {
        "asr/losses/__init__.py": "",
        "asr/losses/mutual_information_triton.py": "",
        "asr/losses/mutual_information.py":
            "def f():\n    from asr.losses import mutual_information_triton\n",
    })
    assert check.violations(root) == []


def test_the_architecture_page_lists_the_checkers_layers():
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rows = re.findall(r"^\| (\d+) ([^|]+) \| ([^|]+) \|", page, re.M)
    assert [(int(n), name.strip()) for n, name, _ in rows] == [
        (i + 1, name) for i, (name, _) in enumerate(check.LAYERS)
    ]
    for (_, _, modules), (_, prefixes) in zip(rows, check.LAYERS):
        assert tuple(re.findall(r"`([\w.]+)`", modules)) == prefixes


def _sentence(page: str, start: str) -> str:
    """The text of ``page`` from ``start`` to the end of its sentence (a period before a space)."""
    text = page[page.index(start):]
    return " ".join(re.split(r"\.\s", text, maxsplit=1)[0].split())


def test_the_page_names_the_optional_backends_the_checker_allows():
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    named = re.findall(r"`(asr\.[\w.]+)`", _sentence(page, "imports sit at the top of a module"))
    assert sorted(named) == sorted(check.LAZY_ALLOWED)


def test_the_page_names_the_searchers_that_bias_and_stream():
    from asr.decoding.registry import SEARCHERS

    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    sentence = _sentence(page, "A row's `biases`")
    biasing = re.findall(r"`(\w+)`", sentence.split("(today", 1)[1].split(")", 1)[0])
    assert sorted(biasing) == sorted(s.name for s in SEARCHERS if s.biases)
    streaming = sentence.split("runs chunk by chunk (", 1)[1].split(")", 1)[0]
    named = set(re.findall(r"`(\w+)`", streaming)) | set(biasing)
    if "the greedy searchers" in streaming:
        named |= {s.name for s in SEARCHERS if s.role == "greedy"}
    assert sorted(named) == sorted(s.name for s in SEARCHERS if s.streaming)
