"""Deployment exports of model packages: ONNX graphs in the layouts the sherpa-onnx runtime loads
(:mod:`asr.export.sherpa`; the graphs themselves are :mod:`asr.export.graphs`)."""

from __future__ import annotations

from asr.export.sherpa import ExportReport, OnnxExportError, export_onnx

__all__ = ["ExportReport", "OnnxExportError", "export_onnx"]
