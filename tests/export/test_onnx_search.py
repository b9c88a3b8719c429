"""The package's search settings that sherpa-onnx has too travel with its export: sherpa-onnx
decodes an ``asr export-onnx`` directory as our runtime decodes the package."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asr.export import export_onnx
from asr.export.sherpa_decode import load_recognizer
from asr.export.sherpa_streaming import load_streaming_recognizer
from asr.package import export_package
from asr.runtime.offline import load_model
from asr.testing.packages import random_experiment

#: The random transducer (seed 5) leaves 3 frames of the first input blank; this penalty makes
#: it emit on them too.
PENALTY = 1.0
#: Our greedy search configured as sherpa-onnx's (one symbol per frame).
ONE_PER_FRAME = "search.max_symbols_per_frame=1"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A random transducer's experiment directory."""
    return random_experiment(tmp_path_factory.mktemp("experiment"), head="transducer", seed=5)


@pytest.fixture(scope="module")
def penalized(experiment, tmp_path_factory):
    """Its package, whose search has ``blank_penalty`` :data:`PENALTY`."""
    package = tmp_path_factory.mktemp("penalized") / "package"
    export_package(experiment, package, search={"blank_penalty": PENALTY})
    return package


def _waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32)
            for s in (0.6, 1.1, 1.7)]


def _ours(package, *overrides: str) -> list[tuple[int, ...]]:
    model = load_model(package, searcher="transducer_greedy", search=[ONE_PER_FRAME, *overrides])
    return [r.token_ids for r in model.transcribe(_waves())]


def test_sherpa_onnx_decodes_an_export_with_its_packages_blank_penalty(penalized, tmp_path):
    """The export dropped the package's ``search.blank_penalty``: sherpa-onnx decoded without
    it what our runtime decodes with it. export.json records it and the loader applies it
    (a penalty given still overrides it)."""
    out = tmp_path / "onnx"
    report = export_onnx(penalized, out)
    assert report.search == {"blank_penalty": PENALTY}
    assert json.loads((out / "export.json").read_text())["search"] == {"blank_penalty": PENALTY}
    ours, plain = _ours(penalized), _ours(penalized, "search.blank_penalty=0")
    assert ours != plain  # the penalty changes what the greedy search finds
    recognizer = load_recognizer(out)
    assert recognizer.blank_penalty == PENALTY
    assert [r.token_ids for r in recognizer.decode(_waves())] == ours
    given = load_recognizer(out, blank_penalty=0.0)
    assert [r.token_ids for r in given.decode(_waves())] == plain


def test_the_sherpa_engine_serves_a_streaming_export_with_its_packages_blank_penalty(
        penalized, tmp_path):
    """``asr serve --engine sherpa-onnx`` without ``--set search.blank_penalty`` served with
    none; it serves with the package's now, and with the one given when given."""
    out = tmp_path / "onnx-streaming"
    export_onnx(penalized, out, streaming=True)
    assert load_streaming_recognizer(out).online.config.blank_penalty == PENALTY
    given = load_streaming_recognizer(out, search={"blank_penalty": 1.0})
    assert given.online.config.blank_penalty == 1.0


def test_a_ctc_export_says_sherpa_onnx_drops_the_blank_penalty(penalized, tmp_path, caplog):
    """sherpa-onnx's CTC search has no blank penalty: the export says so, and records none."""
    out = tmp_path / "onnx-ctc"
    report = export_onnx(penalized, out, head="ctc")
    assert report.search == {}
    [note] = report.notes
    assert note.startswith(f"the package's search.blank_penalty {PENALTY:g} is not applied")
    assert note in caplog.text
    assert json.loads((out / "export.json").read_text())["search"] == {}
    assert load_recognizer(out).blank_penalty == 0.0


def test_a_negative_blank_penalty_is_refused_not_ignored(experiment, penalized, tmp_path):
    """sherpa-onnx subtracts a blank penalty only when it is positive: a negative one (a blank
    bonus, which our searches apply) was passed on and ignored. The loader refuses it, and the
    export of a package with one records none and says why."""
    out = tmp_path / "onnx"
    export_onnx(penalized, out)
    with pytest.raises(ValueError, match=r"^blank_penalty -0.5: sherpa-onnx applies a positive "
                                         r"blank penalty only"):
        load_recognizer(out, blank_penalty=-0.5)
    package = tmp_path / "bonus"
    export_package(experiment, package, search={"blank_penalty": -0.5})
    report = export_onnx(package, tmp_path / "onnx-bonus")
    assert report.search == {}
    assert report.notes == ["the package's search.blank_penalty -0.5 is not applied: sherpa-onnx "
                            "applies a positive blank penalty only, so its results can differ "
                            "from asr's"]
    assert load_recognizer(tmp_path / "onnx-bonus").blank_penalty == 0.0


def test_a_corrupt_recorded_penalty_is_named(penalized, tmp_path):
    """An export.json whose search.blank_penalty is no number is refused naming the field."""
    out = tmp_path / "onnx"
    export_onnx(penalized, out)
    report = json.loads((out / "export.json").read_text())
    (out / "export.json").write_text(json.dumps({**report, "search": {"blank_penalty": "1"}}))
    with pytest.raises(ValueError, match=r"export\.json: field search\.blank_penalty is no finite "
                                         r"number: '1'$"):
        load_recognizer(out)
