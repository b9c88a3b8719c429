"""The check of a quantized graph against its float graph (``_check_int8`` of
:mod:`asr.export.sherpa`), on two-output graphs built here: every output counts."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from asr.export import OnnxExportError
from asr.export.sherpa import _check_int8


def _graph(path, second: str, scale: float = 1.0, width: int = 4) -> None:
    """x (N, 4) -> y0 = x, y1 = ``second``(x * scale) (of ``width`` columns): a float graph
    and its stand-in quantized copy, as a streaming encoder's frames and next state."""
    nodes = [helper.make_node("Identity", ["x"], ["y0"]),
             helper.make_node("Constant", [], ["s"], value_float=scale),
             helper.make_node("Mul", ["x", "s"], ["xs"])]
    if width == 4:
        nodes.append(helper.make_node(second, ["xs"], ["y1"]))
    else:
        nodes += [helper.make_node("Constant", [], ["k"],
                                   value=helper.make_tensor("k", TensorProto.INT64, [1],
                                                            [width])),
                  helper.make_node("Constant", [], ["z"],
                                   value=helper.make_tensor("z", TensorProto.INT64, [1], [0])),
                  helper.make_node("Constant", [], ["one"],
                                   value=helper.make_tensor("one", TensorProto.INT64, [1],
                                                            [1])),
                  helper.make_node("Slice", ["xs", "z", "k", "one"], ["y1"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y0", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["N", None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_every_output_of_an_int8_graph_is_checked(tmp_path):
    """Only the first output was run through the checks: a quantized streaming encoder whose
    next states were infinite, or of another shape, passed them."""
    fp32, int8 = tmp_path / "encoder.onnx", tmp_path / "encoder.int8.onnx"
    _graph(fp32, "Identity")
    _graph(int8, "Identity", scale=1.01)
    line = _check_int8(fp32, int8)
    assert "max |diff|" in line and "(y1, of 2 outputs)" in line, line
    _graph(int8, "Log", scale=0.0)  # log(0): -inf in the second output only
    with pytest.raises(OnnxExportError, match="encoder.int8.onnx: output y1 is not finite"):
        _check_int8(fp32, int8)
    _graph(int8, "Identity", width=3)
    with pytest.raises(OnnxExportError, match=r"output y1 has shape \(2, 3\), encoder.onnx "
                                              r"\(2, 4\)"):
        _check_int8(fp32, int8)
