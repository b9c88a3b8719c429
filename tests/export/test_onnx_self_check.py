"""The self-check of ``asr export-onnx`` (:mod:`asr.export.sherpa`) fails on a wrong graph or on
metadata that sherpa-onnx's loaders would misread, and a failed export changes nothing on disk.

Each wrong graph is planted by patching one export wrapper (:mod:`asr.export.graphs`) while the
export runs: the self-check compares with the model's own code paths, which stay as they are.
Each wrong metadata value is planted as the graph file is written.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from asr.export import OnnxExportError, export_onnx, graphs
from asr.export import sherpa as sherpa_export


@pytest.fixture
def packages(random_packages) -> dict[str, Path]:
    """The session's random transducer and TDT packages (tests/export/conftest.py)."""
    return random_packages


def _wrap(monkeypatch, cls: type, change) -> None:
    """Patches ``cls.forward`` so that ``change(self, outputs, *inputs)`` makes its outputs."""
    forward = cls.forward

    def planted(self, *inputs):
        return change(self, forward(self, *inputs), *inputs)

    monkeypatch.setattr(cls, "forward", planted)


def _plant_decoder_reversed(monkeypatch) -> None:  # reads its context newest first
    forward = graphs.Decoder.forward
    monkeypatch.setattr(graphs.Decoder, "forward", lambda self, y: forward(self, y.flip(1)))


def _plant_offline_lengths_ignored(monkeypatch) -> None:  # padding reaches valid frames
    forward = graphs.OfflineEncoder.forward
    monkeypatch.setattr(graphs.OfflineEncoder, "forward",
                        lambda self, x, x_lens: forward(self, x, torch.full_like(x_lens,
                                                                                 x.shape[1])))


def _plant_streaming_cache_dropped(monkeypatch) -> None:  # attends to zeros, not its cache
    forward = graphs.StreamingEncoder.forward
    monkeypatch.setattr(graphs.StreamingEncoder, "forward",
                        lambda self, x, *states: forward(self, x, *[s * 0 for s in states[:-1]],
                                                         states[-1]))


#: name -> (layout of the conftest's ``random_exports``, graph the error names, what to patch).
WRONG_GRAPHS = {
    "decoder context reversed": ("offline", "decoder.onnx", _plant_decoder_reversed),
    "joiner logits shifted": ("offline", "joiner.onnx", lambda mp: _wrap(
        mp, graphs.Joiner, lambda self, out, *_: out + 0.05)),
    "offline encoder ignores lengths": ("offline", "encoder.onnx", _plant_offline_lengths_ignored),
    "ctc probabilities, not log": ("ctc", "model.onnx", lambda mp: _wrap(
        mp, graphs.CtcModel, lambda self, out, *_: (out[0].exp(), out[1]))),
    "streaming cache dropped": ("streaming", "encoder.onnx", _plant_streaming_cache_dropped),
    "streaming processed_lens off by one": ("streaming", "encoder.onnx", lambda mp: _wrap(
        mp, graphs.StreamingEncoder, lambda self, out, *_: (*out[:-1], out[-1] + 1))),
    "tdt decoder forgets its context": ("tdt", "decoder.onnx", lambda mp: _wrap(
        mp, graphs.NemoDecoder, lambda self, out, *_: (out[0], out[1], out[2] * 0, out[3]))),
    "tdt skips reversed": ("tdt", "joiner.onnx", lambda mp: _wrap(
        mp, graphs.NemoJoiner, lambda self, out, *_: torch.cat(
            [out[:, :self.vocab_size], out[:, self.vocab_size:].flip(1)], dim=1))),
}


def _snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (and its siblings' names) -> a digest of its content."""
    files = {p.relative_to(directory.parent).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in directory.rglob("*") if p.is_file()}
    return {**files, **{p.name: "" for p in directory.parent.iterdir()}}


@pytest.mark.parametrize("name", list(WRONG_GRAPHS))
def test_the_self_check_fails_on_a_wrong_graph(random_exports, export_layouts, tmp_path,
                                                monkeypatch, name):
    """A graph that computes something else than the model is refused, naming the graph, and a
    forced export over an earlier one leaves that one as it was (nothing mixed, nothing left).
    The earlier export is a copy of the session's good export of that layout (fp32 and int8)."""
    layout, graph, plant = WRONG_GRAPHS[name]
    package, earlier, _ = random_exports[layout]
    options = export_layouts[layout][1]
    out = tmp_path / "onnx"
    shutil.copytree(earlier, out)
    before = _snapshot(out)
    plant(monkeypatch)
    with pytest.raises(OnnxExportError, match=rf"^{graph}: "):
        export_onnx(package, out, force=True, **options)
    assert _snapshot(out) == before


#: name -> (export options, graph, metadata key, the wrong value as a function of the right one).
WRONG_METADATA = {
    "streaming window": ({"streaming": True}, "encoder.onnx", "T", lambda v: v + 4),
    "streaming shift": ({"streaming": True}, "encoder.onnx", "decode_chunk_len", lambda v: v - 4),
    "streaming left context": ({"streaming": True}, "encoder.onnx", "left_context_len",
                               lambda v: v + 4),
    "streaming conv kernel": ({"streaming": True}, "encoder.onnx", "csgu_kernel_size",
                              lambda v: v - 2),
    "streaming layers": ({"streaming": True}, "encoder.onnx", "num_hidden_layers",
                         lambda v: v + 1),
    "decoder context size": ({}, "decoder.onnx", "context_size", lambda v: v + 1),
    "decoder vocab size": ({}, "decoder.onnx", "vocab_size", lambda v: v + 1),
    "tdt decoder states": ({"tdt": True}, "encoder.onnx", "pred_hidden", lambda v: v + 1),
    "tdt vocab size": ({"tdt": True}, "encoder.onnx", "vocab_size", lambda v: v + 1),
}


@pytest.mark.parametrize("name", list(WRONG_METADATA))
def test_the_self_check_reads_the_metadata_as_sherpa_onnx_does(packages, tmp_path, monkeypatch,
                                                               name):
    """sherpa-onnx builds its inputs from the graphs' metadata (the streaming window and shift,
    the zero states of a new stream, the decoder's context width, the logits' row stride, the
    NeMo decoder's states), and the self-check now builds them from it too. It used its own
    values, so a directory whose metadata sherpa-onnx misreads (or cannot run with) passed."""
    options, graph, key, wrong = WRONG_METADATA[name]
    options = dict(options)
    package = packages["tdt" if options.pop("tdt", False) else "transducer"]
    write = sherpa_export._add_metadata

    def planted(path: Path, meta: dict[str, str]) -> None:
        if path.name == graph and key in meta:
            meta = {**meta, key: str(wrong(int(meta[key])))}
        write(path, meta)

    monkeypatch.setattr(sherpa_export, "_add_metadata", planted)
    with pytest.raises(OnnxExportError, match=rf"^{graph}: |^[a-z]+\.onnx: .*{key}"):
        export_onnx(package, tmp_path / "onnx", **options)
    assert not (tmp_path / "onnx").exists()


def test_a_failed_quantization_names_the_graph(packages, tmp_path, monkeypatch, caplog):
    """onnxruntime's quantizer raising went out as its own exception (a traceback, exit 1 with
    no file named); it is an export that failed, naming the graph, and nothing is written."""
    import onnxruntime.quantization

    from asr.cli.main import main

    def broken(model_input, model_output, **kwargs):
        raise RuntimeError("unsupported node")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", broken)
    with pytest.raises(OnnxExportError, match=r"^encoder.int8.onnx: onnxruntime's "
                                              r"quantize_dynamic failed on encoder.onnx: "
                                              r"unsupported node"):
        export_onnx(packages["transducer"], tmp_path / "onnx", int8=True)
    assert main(["export-onnx", "--model", str(packages["transducer"]), "--output-dir",
                 str(tmp_path / "onnx"), "--int8"]) == 1
    assert "encoder.int8.onnx: onnxruntime's quantize_dynamic failed" in caplog.text
    assert not (tmp_path / "onnx").exists()


#: layout -> (package, export options).
LAYOUTS = {
    "transducer": ("transducer", {}),
    "streaming transducer": ("transducer", {"streaming": True}),
    "ctc": ("transducer", {"head": "ctc"}),
    "tdt": ("tdt", {}),
}


def sessions_opened(monkeypatch) -> list[str]:
    """A list that collects the file name of every onnxruntime session opened from now on."""
    import onnxruntime

    loaded: list[str] = []
    real = onnxruntime.InferenceSession

    def counting(path, *args, **kwargs):
        loaded.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", counting)
    return loaded


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_self_check_loads_each_graph_into_onnxruntime_once(packages, tmp_path, monkeypatch,
                                                                 layout):
    """A check that needs another graph's metadata (the joiner's the decoder's, the NeMo
    decoder's and joiner's the encoder's) opened that graph in a new onnxruntime session: the
    decoder was loaded twice, the TDT encoder three times. It is handed what that graph's own
    check read."""
    loaded = sessions_opened(monkeypatch)
    package, options = LAYOUTS[layout]
    report = export_onnx(packages[package], tmp_path / "onnx", **options)
    assert sorted(loaded) == sorted(report.metadata)


@pytest.mark.parametrize("layout", ["transducer", "tdt"])
def test_an_int8_export_loads_each_graph_into_onnxruntime_once(packages, tmp_path, monkeypatch,
                                                                layout):
    """``--int8`` compares each quantized graph with its float graph: that comparison loaded
    the float graph into onnxruntime a second time (its self-check had it loaded already)."""
    loaded = sessions_opened(monkeypatch)
    package, options = LAYOUTS[layout]
    report = export_onnx(packages[package], tmp_path / "onnx", int8=True, **options)
    int8 = [name.replace(".onnx", ".int8.onnx") for name in report.metadata]
    assert sorted(loaded) == sorted([*report.metadata, *int8])
