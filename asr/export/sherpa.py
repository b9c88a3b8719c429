"""Export a model package to the ONNX layouts the sherpa-onnx runtime loads, checked before
anything is written.

Layouts (the files of ``OUT``; docs/ONNX.md has their inputs, outputs and metadata):

=====================  ===================================  ========================================
what                   files                                sherpa-onnx loader
=====================  ===================================  ========================================
transducer, offline    ``encoder.onnx``, ``decoder.onnx``,  ``OfflineRecognizer.from_transducer``
                       ``joiner.onnx``
transducer, streaming  the same, ``encoder.onnx`` chunk by  ``OnlineRecognizer.from_transducer``
                       chunk (``ebranchformer`` state
                       layout)
CTC, offline           ``model.onnx``                       ``OfflineRecognizer.from_zipformer_ctc``
TDT, offline           ``encoder.onnx``, ``decoder.onnx``,  ``OfflineRecognizer.from_transducer``
                       ``joiner.onnx`` (NeMo transducer     (``model_type="nemo_transducer"``)
                       layout, blank last)
=====================  ===================================  ========================================

plus ``tokens.txt`` (``piece id``, blank ``<blk>`` at 0), ``bpe.vocab`` for a BPE tokenizer
(``piece<TAB>score``: what sherpa-onnx's hotwords need, ``modeling_unit="bpe"``,
``bpe_vocab=``; :func:`write_bpe_vocab`), ``*.int8.onnx`` with ``int8=True``
(onnxruntime dynamic quantization, QInt8 weights: MatMul everywhere, and Gather in the decoder
whose embedding is one), and ``export.json`` (what was exported, the front end it expects, the
search settings of the package that sherpa-onnx has too, and the self-check's figures).

**Search settings.** A transducer layout records the package's ``search.blank_penalty`` in
``export.json`` (``search``), and :func:`asr.export.sherpa_decode.load_recognizer` gives it to
sherpa-onnx (its ``blank_penalty``) unless told another, so that sherpa-onnx decodes an export
as our runtime decodes its package. sherpa-onnx's CTC search has no blank penalty, and its
transducer searches ignore a negative one: such an export records none and says so in its
notes (and a warning).

**Self-check.** Before the output directory appears, every graph is run by onnxruntime on the
same inputs as the PyTorch modules it came from (the model's own code paths, not the export
wrappers): batches of 3 with different lengths padded as sherpa pads them and a batch shorter
than the subsampling window (no output frame), the decoder on every
start context sherpa builds, the streaming encoder over several chunks with states carried and
two streams at different positions batched together. Those inputs are made from the written
graphs' metadata as sherpa-onnx's loaders make them (the streaming window and shift, a new
stream's zero states, the decoder's context width, the NeMo decoder's states), so metadata they
would misread fails the check. Outputs must agree within
``|onnx - torch| <= ATOL + RTOL * |torch|`` (:data:`ATOL`, :data:`RTOL`), lengths exactly, and
the inputs and outputs must come in the count, order and dtypes the loaders index them by.
int8 graphs are checked for that layout and for finite outputs; their numeric distance is
reported, not gated (quantization changes the numbers by design; measure its WER).

**Features.** sherpa-onnx computes its own features (Kaldi fbank, Povey window, 25/10 ms,
low 20 Hz, high -400 Hz, no dither, no snip_edges, samples in [-1, 1]); the package's
``data.fbank`` must be those options (the defaults of :class:`asr.features.fbank.FbankConfig`),
or the export fails naming the field. Its ``dither`` is training noise: the self-check's
features and ``export.json`` use the recognition front end, ``data.fbank`` without it
(:meth:`~asr.features.fbank.FbankConfig.for_recognition`, as the runtime). Global CMVN is
inside the encoder graph. TDT models go through sherpa-onnx's NeMo path, which imposes its own
front end (:data:`SHERPA_NEMO_FBANK`: librosa-style mel filters, low 0 Hz, no DC removal;
``data.fbank.mel_filters: librosa`` trains on it); a TDT trained on other features still exports,
with a warning in ``export.json`` (docs/ONNX.md has what that cost the tiny model).

Example:
    >>> report = export_onnx("pkg", "pkg-onnx", streaming=True, int8=True)
    >>> print(report.summary())
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from asr.constants import EXPORT_REPORT_FILE
from asr.encoders import encoder_class
from asr.encoders.chunked import ChunkedEncoder
from asr.export.graphs import (
    STATES_PER_LAYER,
    CtcModel,
    Decoder,
    Joiner,
    NemoDecoder,
    NemoEncoder,
    NemoJoiner,
    OfflineEncoder,
    StreamingEncoder,
    chunk_frames,
    nemo_state_width,
)
from asr.features.fbank import FbankConfig, compute_fbank
from asr.fileio import publish_directory, staging_directory
from asr.heads.ctc import CTCHead
from asr.heads.predictor import StatelessPredictor
from asr.heads.transducer import TransducerHead
from asr.model import ASRModel
from asr.package import (
    ModelPackage,
    PackageError,
    load_package,
    locked_output_dir,
)
from asr.tokenizers.base import write_tokens_file
from asr.tokenizers.bpe import BpeTokenizer
from asr.version import __version__

__all__ = [
    "ATOL",
    "BPE_VOCAB",
    "DEFAULT_OPSET",
    "ExportReport",
    "NoLayoutError",
    "OnnxExportError",
    "OnnxInputError",
    "PAD_VALUE",
    "RTOL",
    "SHERPA_FBANK",
    "SHERPA_NEMO_FBANK",
    "export_onnx",
    "sherpa_fbank_problem",
    "write_bpe_vocab",
]

logger = logging.getLogger(__name__)

#: Opset of the exported graphs (the TorchScript-based exporter; sherpa-onnx's bundled
#: onnxruntime loads 13 and later).
DEFAULT_OPSET = 17
#: The opsets ``--opset`` may name: the graphs slice by int64 tensors (opset 13 and later), up
#: to the newest the TorchScript-based exporter writes.
MIN_OPSET = 13
MAX_OPSET = getattr(getattr(torch.onnx, "_constants", None),
                    "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
#: Self-check tolerance: ``|onnx - torch| <= ATOL + RTOL * |torch|`` element-wise.
ATOL = 1e-3
RTOL = 1e-3
#: What sherpa-onnx pads offline feature batches with (log of its energy floor 1e-10).
PAD_VALUE = math.log(1e-10)
#: The front end of sherpa-onnx's icefall-style models (its ``FeatureExtractorConfig``
#: defaults), as our feature options; ``num_mel_bins`` may differ (``feature_dim`` is passed).
SHERPA_FBANK = FbankConfig()

_FBANK_FIELDS = ("frame_length_ms", "frame_shift_ms", "snip_edges", "low_freq", "high_freq",
                 "preemph_coeff", "window_type", "remove_dc_offset", "round_to_power_of_two",
                 "mel_filters")
#: The front end sherpa-onnx imposes on NeMo-style transducers (TDT): librosa-style filters from
#: 0 Hz, no DC removal, the rest as :data:`SHERPA_FBANK`.
SHERPA_NEMO_FBANK = FbankConfig(mel_filters="librosa", low_freq=0.0, remove_dc_offset=False)
#: The head kinds (:data:`asr.model.HEADS`) the export has a layout for: transducers (RNN-T,
#: TDT) and CTC; any other is refused, naming these.
LAYOUT_KINDS = ("rnnt", "tdt", "ctc")
_TOKENS = "tokens.txt"
#: sherpa-onnx's hotwords encoder reads it (``modeling_unit="bpe"``, ``bpe_vocab=``).
BPE_VOCAB = "bpe.vocab"
_REPORT = EXPORT_REPORT_FILE


class OnnxExportError(ValueError):
    """A package that cannot be exported in a sherpa-onnx layout, or an export that failed its
    self-check."""


class OnnxInputError(OnnxExportError):
    """A bad input or option of the export, found before any graph is made: the package (missing,
    corrupt, not a package), ``out_dir`` (in the way, being written by another run, not
    writable), ``head``,
    the chunking, or a package sherpa-onnx has no layout for (:class:`NoLayoutError`)."""


class NoLayoutError(OnnxInputError):
    """sherpa-onnx has no layout for the package in the mode asked for (its heads, its features,
    a non-streaming model asked to stream): nothing to export, as opposed to an export that
    failed."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote.

    Attributes:
        out_dir: the output directory.
        layout: ``transducer``, ``streaming_transducer`` or ``ctc``.
        head: the exported head.
        files: file names in ``out_dir``.
        checks: one line per self-check (graph, inputs, largest difference).
        metadata: graph file -> its metadata.
        loader: how sherpa-onnx loads the directory (Python).
        notes: what the export could not keep of the package (logged as warnings too).
        search: the package's search settings that sherpa-onnx applies (``blank_penalty``;
            transducer layouts), recorded in ``export.json``.
    """

    out_dir: Path
    layout: str
    head: str
    files: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    loader: str = ""
    notes: list[str] = field(default_factory=list)
    search: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{self.out_dir}: {self.layout} ({self.head} head): {', '.join(self.files)}"]
        lines += [f"  check {line}" for line in self.checks]
        lines += [f"  note: {line}" for line in self.notes]
        if self.search:
            lines.append("  search: " + ", ".join(f"{k}={v:g}" for k, v in self.search.items()))
        lines.append(f"  load with: {self.loader}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- choosing


def sherpa_fbank_problem(fbank: FbankConfig, nemo: bool = False) -> str | None:
    """Why features of ``fbank`` differ from sherpa-onnx's front end (its NeMo-path one with
    ``nemo``), or None."""
    want = SHERPA_NEMO_FBANK if nemo else SHERPA_FBANK
    wrong = [f"{name}={getattr(fbank, name)!r} (sherpa-onnx: {getattr(want, name)!r})"
             for name in _FBANK_FIELDS if getattr(fbank, name) != getattr(want, name)]
    if not wrong:
        return None
    hint = ("data.fbank {mel_filters: librosa, low_freq: 0, remove_dc_offset: false} with "
            "data.on_the_fly_feats: true" if nemo else "the default data.fbank options")
    return (f"the model's features differ from sherpa-onnx's {'NeMo-path ' if nemo else ''}"
            "front end: " + ", ".join(wrong) + f"; train with {hint}")


def _choose_head(model: ASRModel, head: str | None, streaming: bool) -> str:
    kinds = model.head_kinds()
    trained = model.head_kinds(trained_only=True)
    if head is None:
        candidates = [name for name, kind in trained.items() if kind in LAYOUT_KINDS]
        if streaming:
            candidates = [name for name in candidates if name == "transducer"] or candidates
        if not candidates:
            raise NoLayoutError(
                f"no sherpa-onnx layout for the package's heads ({', '.join(kinds.values())}): "
                "transducer and CTC heads export; sherpa-onnx's AED and Paraformer loaders are "
                "for other networks and front ends")
        head = candidates[0]
    if head not in kinds:
        raise OnnxInputError(f"--head {head}: the package has heads {sorted(kinds)}")
    kind = kinds[head]
    if kind not in LAYOUT_KINDS:
        raise NoLayoutError(
            f"the {head} head ({kind}) has no sherpa-onnx layout; the export has layouts for "
            f"the head kinds {', '.join(LAYOUT_KINDS)} (sherpa-onnx runs transducers and CTC "
            "models of its own families; its AED and Paraformer loaders expect other networks "
            "and front ends): export a transducer or CTC head")
    if kind == "tdt" and streaming:
        raise NoLayoutError(
            "--streaming: sherpa-onnx streams NeMo-style transducers without their durations, "
            "so a TDT head exports offline only")
    if kind == "ctc" and streaming:
        raise NoLayoutError(
            "--streaming: sherpa-onnx has no streaming CTC layout for Kaldi-fbank models of our "
            "kind; stream through a transducer head")
    if kind in ("rnnt", "tdt"):
        predictor = model.heads[head].predictor
        if not isinstance(predictor, StatelessPredictor):
            raise NoLayoutError(
                f"the transducer head has a {type(predictor).__name__}: sherpa-onnx's transducer "
                "layout needs the stateless predictor (transducer.predictor: stateless)")
    return head


# ----------------------------------------------------------------------------- export


def export_onnx(
    package_dir: str | Path,
    out_dir: str | Path,
    *,
    streaming: bool = False,
    int8: bool = False,
    opset: int = DEFAULT_OPSET,
    head: str | None = None,
    force: bool = False,
    chunk_size: int | None = None,
    left_chunks: int | None = None,
) -> ExportReport:
    """Exports ``package_dir`` to ``out_dir`` (see the module docstring).

    Args:
        package_dir: a model package.
        out_dir: directory to create.
        streaming: the streaming transducer layout (the package must stream).
        int8: also write dynamically quantized ``*.int8.onnx`` graphs.
        opset: ONNX opset.
        head: ``transducer`` (RNN-T or TDT) or ``ctc`` (default: the first trained one).
        force: replace an earlier export in ``out_dir`` (a directory holding ``export.json``,
            or an empty one; never the package or a directory that holds it).
        chunk_size, left_chunks: streaming chunking (default: the package's).

    Raises:
        NoLayoutError: for a package (head, features, streaming) without a sherpa-onnx layout.
        OnnxInputError: for a missing or corrupt package, an existing ``out_dir`` without
            ``force`` (or one that is no earlier export, or one another run is writing, or one
            that cannot be written: no permission, a read-only file system), an
            unknown ``head``, an ``opset`` out of range, a chunking without ``streaming`` or
            a chunk size below 1 or left chunks below -1 (bad values, never "no layout").
        OnnxExportError: for a failed export or self-check (nothing is written then).
    """
    out_dir = Path(out_dir)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxInputError(f"--opset {opset}: the graphs export at opsets {MIN_OPSET} to "
                             f"{MAX_OPSET} (default {DEFAULT_OPSET})")
    if not streaming and (chunk_size is not None or left_chunks is not None):
        raise OnnxInputError("chunk_size and left_chunks (--chunk-size, --left-chunks) set the "
                              "chunking of the streaming graphs: pass streaming=True (--streaming)")
    if chunk_size is not None and chunk_size < 1:
        raise OnnxInputError(f"--chunk-size {chunk_size}: a chunk is at least 1 encoder frame")
    if left_chunks is not None and left_chunks < -1:
        raise OnnxInputError(f"--left-chunks {left_chunks}: the left context is a number of "
                             "chunks >= 0 (-1, unlimited, has no fixed-shape layout)")
    with locked_output_dir(out_dir, force, _REPORT, [Path(package_dir)], "--overwrite",
                           OnnxInputError):
        try:
            package = load_package(package_dir)
        except PackageError as err:
            raise OnnxInputError(str(err)) from err
        return _export(package, out_dir, streaming, int8, opset, head, chunk_size, left_chunks)


def _export(package: ModelPackage, out_dir: Path, streaming: bool, int8: bool, opset: int,
            head: str | None, chunk_size: int | None, left_chunks: int | None) -> ExportReport:
    """The body of :func:`export_onnx`, run under the lock of ``out_dir``."""
    package_dir = package.directory
    try:
        model = package.build_model("cpu")
    except PackageError as err:  # weights that do not fit the config: a corrupt package
        raise OnnxInputError(str(err)) from err
    head = _choose_head(model, head, streaming)
    if model.head_kinds()[head] != "tdt":
        problem = sherpa_fbank_problem(package.config.data.fbank)
        if problem is not None:
            raise NoLayoutError(f"{package_dir}: {problem}")
    if streaming:
        chunk_size = package.config.encoder.chunk_size if chunk_size is None else chunk_size
        left_chunks = package.config.encoder.left_chunks if left_chunks is None else left_chunks
        why = encoder_class(package.config.encoder.kind).streaming_problem(
            package.config.encoder, chunk_size, left_chunks)
        if why is not None:
            raise NoLayoutError(f"--streaming: {package_dir} is not a streaming model: {why}")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise OnnxExportError(
            f"ONNX export needs the onnx and onnxruntime packages ({err}): "
            "pip install -e '.[onnx]'"
        ) from err

    kept: dict[Path, Any] = {}  # each graph's onnxruntime session, from its own check
    with staging_directory(out_dir) as tmp:
        if model.head_kinds()[head] == "ctc":
            report = _export_ctc(model, package, head, tmp, opset, kept)
        elif model.head_kinds()[head] == "tdt":
            report = _export_tdt(model, package, head, tmp, opset, kept)
        else:
            chunking = (chunk_size, left_chunks) if streaming else None
            report = _export_transducer(model, package, head, tmp, opset, chunking, kept)
        _record_search(report, package)
        if int8:
            _quantize_all(report, tmp, kept)
        kept.clear()  # every graph is checked: their sessions can go
        _write_tokens(package, tmp / _TOKENS, blank_last=report.layout == "tdt")
        if isinstance(package.tokenizer, BpeTokenizer):
            write_bpe_vocab(package.tokenizer, tmp / BPE_VOCAB)
        report.files = sorted(p.name for p in tmp.iterdir()) + [_REPORT]
        report.out_dir = out_dir
        _write_report(report, package, tmp / _REPORT)
        publish_directory(tmp, out_dir)
    logger.info("wrote %s", out_dir)
    return report


def _record_search(report: ExportReport, package: ModelPackage) -> None:
    """Puts the package's ``search.blank_penalty`` in ``report.search`` (a transducer layout,
    whose sherpa-onnx searches take it), or a note and a warning where sherpa-onnx cannot apply
    it: a CTC layout, whose search has none, and a negative penalty (a blank bonus), which its
    searches ignore."""
    penalty = float(package.config.search.blank_penalty)
    if report.layout != "ctc" and penalty >= 0:
        report.search["blank_penalty"] = penalty
        return
    if not penalty:
        return
    why = ("sherpa-onnx's CTC search has no blank penalty" if report.layout == "ctc" else
           "sherpa-onnx applies a positive blank penalty only")
    note = (f"the package's search.blank_penalty {penalty:g} is not applied: {why}, so its "
            "results can differ from asr's")
    logger.warning("%s: %s", package.directory, note)
    report.notes.append(note)


def _base_metadata(package: ModelPackage, model_type: str) -> dict[str, str]:
    cfg = package.config
    return {
        "model_type": model_type,
        "version": "1",
        "model_author": "asr",
        "comment": f"exported by asr {__version__} from {package.directory.name}",
        "asr_version": __version__,
        "encoder_kind": cfg.encoder.kind,
        "subsampling_factor": str(encoder_class(cfg.encoder.kind).subsampling_factor),
        "feature_dim": str(cfg.data.fbank.num_mel_bins),
        "sample_rate": str(cfg.data.fbank.sample_rate),
        "vocab_size": str(package.tokenizer.vocab_size),
    }


def _export_transducer(
    model: ASRModel, package: ModelPackage, head_name: str, out: Path, opset: int,
    chunking: tuple[int, int] | None, kept: dict[Path, Any],
) -> ExportReport:
    head: TransducerHead = model.heads[head_name]
    encoder: ChunkedEncoder = model.encoder
    vocab = head.vocab_size
    decoder = Decoder(head).eval()
    joiner = Joiner(head).eval()
    joiner_dim = head.joiner.encoder_proj.out_features
    report = ExportReport(out, "transducer" if chunking is None else "streaming_transducer",
                          head_name)

    if chunking is None:
        enc_meta = _base_metadata(package, "conformer")
        enc_meta.update(chunk_size=str(encoder.cfg.chunk_size),
                        left_chunks=str(encoder.cfg.left_chunks))
        _export_offline_encoder(OfflineEncoder(encoder, head.joiner.encoder_proj).eval(),
                                out / "encoder.onnx", opset, enc_meta)
        report.checks.append(_check_offline(
            out / "encoder.onnx", ["x", "x_lens"], ["encoder_out", "encoder_out_lens"],
            lambda x, n: _project(encoder(x, n), head.joiner.encoder_proj),
            package.config.data.fbank, kept=kept)[0])
        report.loader = (
            "sherpa_onnx.OfflineRecognizer.from_transducer(encoder='encoder.onnx', "
            "decoder='decoder.onnx', joiner='joiner.onnx', tokens='tokens.txt', "
            f"{_front_end_args(package.config.data.fbank)})")
    else:
        chunk_size, left_chunks = chunking
        try:
            wrapper = StreamingEncoder(encoder, head.joiner.encoder_proj, chunk_size,
                                       left_chunks).eval()
        except ValueError as err:  # a streaming model the layout's caches cannot hold
            raise NoLayoutError(f"--streaming: {package.directory}: {err}") from err
        frames, shift = chunk_frames(chunk_size)
        enc_meta = _base_metadata(package, "ebranchformer")
        enc_meta.update({
            "T": str(frames), "decode_chunk_len": str(shift),
            "num_hidden_layers": str(wrapper.num_layers), "hidden_size": str(wrapper.d_model),
            "intermediate_size": str(2 * wrapper.d_model),
            "csgu_kernel_size": str(wrapper.conv_kernel), "merge_conv_kernel": "2",
            "left_context_len": str(wrapper.cache_size), "num_heads": str(wrapper.num_heads),
            "head_dim": str(wrapper.head_dim), "chunk_size": str(chunk_size),
            "left_chunks": str(left_chunks),
        })
        _export_streaming_encoder(wrapper, out / "encoder.onnx", opset, enc_meta,
                                  package.config.data.fbank.num_mel_bins)
        report.checks.append(_check_streaming(out / "encoder.onnx", wrapper, encoder,
                                              package.config.data.fbank, chunk_size, left_chunks,
                                              kept))
        report.loader = (
            "sherpa_onnx.OnlineRecognizer.from_transducer(encoder='encoder.onnx', "
            "decoder='decoder.onnx', joiner='joiner.onnx', tokens='tokens.txt', "
            f"{_front_end_args(package.config.data.fbank)})")
    report.metadata["encoder.onnx"] = enc_meta

    context = decoder.context_size
    dec_meta = {"vocab_size": str(vocab), "context_size": str(context), "blank_id": "0"}
    y = torch.tensor([[-1] * (context - 1) + [0], [1 % vocab] * context], dtype=torch.int64)
    _torch_export(decoder, (y,), out / "decoder.onnx", ["y"], ["decoder_out"],
                  {"y": {0: "N"}, "decoder_out": {0: "N"}}, opset)
    _add_metadata(out / "decoder.onnx", dec_meta)
    report.metadata["decoder.onnx"] = dec_meta
    line, dec_read = _check_decoder(out / "decoder.onnx", head, kept)
    report.checks.append(line)

    join_meta = {"joiner_dim": str(joiner_dim), "vocab_size": str(vocab)}
    enc_frame = torch.randn(2, joiner_dim)
    _torch_export(joiner, (enc_frame, torch.randn(2, joiner_dim)), out / "joiner.onnx",
                  ["encoder_out", "decoder_out"], ["logit"],
                  {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}}, opset)
    _add_metadata(out / "joiner.onnx", join_meta)
    report.metadata["joiner.onnx"] = join_meta
    report.checks.append(_check_joiner(out / "joiner.onnx", out / "decoder.onnx", dec_read,
                                       head, joiner_dim, kept))
    return report


def _export_ctc(
    model: ASRModel, package: ModelPackage, head_name: str, out: Path, opset: int,
    kept: dict[Path, Any],
) -> ExportReport:
    head: CTCHead = model.heads[head_name]
    meta = _base_metadata(package, "zipformer2_ctc")
    meta.update(chunk_size=str(model.encoder.cfg.chunk_size),
                left_chunks=str(model.encoder.cfg.left_chunks), blank_id=str(head.blank_id))
    wrapper = CtcModel(model.encoder, head).eval()
    _export_offline_encoder(wrapper, out / "model.onnx", opset, meta,
                            outputs=("log_probs", "log_probs_len"))
    report = ExportReport(out, "ctc", head_name)
    report.metadata["model.onnx"] = meta
    report.checks.append(_check_offline(
        out / "model.onnx", ["x", "x_lens"], ["log_probs", "log_probs_len"],
        lambda x, n: _ctc_reference(model.encoder, head, x, n), package.config.data.fbank,
        kept=kept)[0])
    report.loader = ("sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(model='model.onnx', "
                     f"tokens='tokens.txt', {_front_end_args(package.config.data.fbank)})")
    return report


def _export_tdt(
    model: ASRModel, package: ModelPackage, head_name: str, out: Path, opset: int,
    kept: dict[Path, Any],
) -> ExportReport:
    """sherpa-onnx's NeMo transducer layout (graphs.NemoEncoder/NemoDecoder/NemoJoiner)."""
    head: TransducerHead = model.heads[head_name]
    encoder: ChunkedEncoder = model.encoder
    vocab = head.vocab_size
    joiner_dim = head.joiner.encoder_proj.out_features
    width = nemo_state_width(head.predictor.context_size)
    report = ExportReport(out, "tdt", head_name)
    fbank = package.config.data.fbank
    mismatch = sherpa_fbank_problem(fbank, nemo=True)
    if mismatch is not None:  # exported all the same: its cost is for the user to measure
        mismatch = f"TDT through sherpa-onnx's NeMo path: {mismatch} (measure the WER)"
        logger.warning("%s", mismatch)
        report.notes.append(mismatch)

    meta = _base_metadata(package, "EncDecRNNTBPEModel")
    meta.update({
        # the NeMo loader's keys: vocab_size WITHOUT blank; "tdt" in url switches durations on
        "vocab_size": str(vocab - 1), "normalize_type": "", "pred_rnn_layers": "1",
        "pred_hidden": str(width), "feat_dim": str(fbank.num_mel_bins),
        "url": "asr-export-tdt", "durations": ",".join(map(str, head.durations)),
        "chunk_size": str(encoder.cfg.chunk_size), "left_chunks": str(encoder.cfg.left_chunks),
    })
    wrapper = NemoEncoder(encoder, head.joiner.encoder_proj).eval()
    x, x_lens = torch.randn(2, fbank.num_mel_bins, 103), torch.tensor([103, 71])
    _torch_export(wrapper, (x, x_lens), out / "encoder.onnx", ["audio_signal", "length"],
                  ["outputs", "encoded_lengths"],
                  {"audio_signal": {0: "N", 2: "T"}, "length": {0: "N"},
                   "outputs": {0: "N", 2: "T_out"}, "encoded_lengths": {0: "N"}}, opset)
    _add_metadata(out / "encoder.onnx", meta)
    report.metadata["encoder.onnx"] = meta
    line, enc_read = _check_offline(
        out / "encoder.onnx", ["audio_signal", "length"], ["outputs", "encoded_lengths"],
        lambda x, n: _project(encoder(x, n), head.joiner.encoder_proj), fbank,
        channels_first=True, pad_value=0.0, kept=kept)
    report.checks.append(line)

    decoder = NemoDecoder(head).eval()
    dec_in = ["targets", "target_length", "states_0", "states_1"]
    dec_out = ["decoder_out", "decoder_out_length", "next_states_0", "next_states_1"]
    args = (torch.tensor([[vocab - 1], [1]], dtype=torch.int32), torch.ones(2, dtype=torch.int32),
            torch.zeros(1, 2, width), torch.zeros(1, 2, width))
    _torch_export(decoder, args, out / "decoder.onnx", dec_in, dec_out,
                  {"targets": {0: "N"}, "target_length": {0: "N"}, "states_0": {1: "N"},
                   "states_1": {1: "N"}, "decoder_out": {0: "N"}, "decoder_out_length": {0: "N"},
                   "next_states_0": {1: "N"}, "next_states_1": {1: "N"}}, opset)
    dec_meta = {"vocab_size": str(vocab - 1), "context_size": str(head.predictor.context_size)}
    _add_metadata(out / "decoder.onnx", dec_meta)
    report.metadata["decoder.onnx"] = dec_meta
    report.checks.append(_check_nemo_decoder(out / "decoder.onnx", out / "encoder.onnx",
                                             enc_read, head, kept))

    joiner = NemoJoiner(head).eval()
    _torch_export(joiner, (torch.randn(2, joiner_dim, 1), torch.randn(2, joiner_dim, 1)),
                  out / "joiner.onnx", ["encoder_out", "decoder_out"], ["logits"],
                  {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logits": {0: "N"}}, opset)
    join_meta = {"joiner_dim": str(joiner_dim), "num_durations": str(max(head.durations) + 1)}
    _add_metadata(out / "joiner.onnx", join_meta)
    report.metadata["joiner.onnx"] = join_meta
    report.checks.append(_check_nemo_joiner(out / "joiner.onnx", out / "encoder.onnx",
                                            enc_read, head, joiner_dim, kept))
    report.loader = (
        "sherpa_onnx.OfflineRecognizer.from_transducer(encoder='encoder.onnx', "
        "decoder='decoder.onnx', joiner='joiner.onnx', tokens='tokens.txt', "
        f"sample_rate={fbank.sample_rate}, model_type='nemo_transducer')")
    return report


def _front_end_args(fbank: FbankConfig) -> str:
    """The loader arguments of the front end: sherpa-onnx computes 16 kHz features unless told
    the model's rate (it resamples the audio to it)."""
    return f"feature_dim={fbank.num_mel_bins}, sample_rate={fbank.sample_rate}"


def _project(outputs: tuple[Tensor, Tensor], projection: nn.Module) -> tuple[Tensor, Tensor]:
    enc, lens = outputs
    return projection(enc), lens


def _ctc_reference(encoder: ChunkedEncoder, head: CTCHead, x: Tensor, x_lens: Tensor):
    enc, lens = encoder(x, x_lens)
    return head.log_probs(enc), lens


# ----------------------------------------------------------------------------- torch -> onnx


def _torch_export(
    module: nn.Module, args: tuple, path: Path, inputs: Sequence[str], outputs: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]], opset: int,
) -> None:
    """The TorchScript-based exporter (``dynamo=False``): it traces our masks, built from
    lengths with ``arange`` comparisons, without data-dependent guards, and keeps the I/O order
    as declared (checked afterwards anyway)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module, args, str(path), input_names=list(inputs), output_names=list(outputs),
                dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False,
                do_constant_folding=True,
            )
        except Exception as err:  # the exporter raises many kinds; name the graph and opset
            raise OnnxExportError(
                f"{path.name}: torch.onnx.export (opset {opset}) failed: {err}") from err


def _export_offline_encoder(
    module: nn.Module, path: Path, opset: int, meta: dict[str, str],
    outputs: tuple[str, str] = ("encoder_out", "encoder_out_lens"),
) -> None:
    # batch >= 2 and distinct lengths, so that no dimension is specialised to its example value
    feature_dim = _feature_dim(module)
    x = torch.randn(2, 103, feature_dim)
    x_lens = torch.tensor([103, 71], dtype=torch.int64)
    _torch_export(module, (x, x_lens), path, ["x", "x_lens"], list(outputs),
                  {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, outputs[0]: {0: "N", 1: "T_out"},
                   outputs[1]: {0: "N"}}, opset)
    _add_metadata(path, meta)


def _feature_dim(module: nn.Module) -> int:
    return int(module.encoder.input_dim)


def _export_streaming_encoder(
    wrapper: StreamingEncoder, path: Path, opset: int, meta: dict[str, str], feature_dim: int
) -> None:
    frames, _ = chunk_frames(wrapper.chunk_size)
    batch = 2
    states = wrapper.init_states(batch)
    states = [torch.randn_like(s) for s in states[:-1]] + [torch.tensor([0, 7])]
    inputs, outputs = _streaming_names(wrapper.num_layers)
    axes = {name: {0: "N"} for name in inputs + outputs}
    _torch_export(wrapper, (torch.randn(batch, frames, feature_dim), *states), path, inputs,
                  outputs, axes, opset)
    _add_metadata(path, meta)


def _streaming_names(num_layers: int) -> tuple[list[str], list[str]]:
    states = []
    for i in range(num_layers):
        states += [f"cached_key_{i}", f"cached_value_{i}", f"cached_conv_{i}",
                   f"cached_conv_fusion_{i}"]
    states.append("processed_lens")
    return ["x", *states], ["encoder_out", *(f"new_{name}" for name in states)]


def _add_metadata(path: Path, meta: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    existing = {p.key: p for p in model.metadata_props}
    for key, value in meta.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            prop = model.metadata_props.add()
            prop.key, prop.value = key, str(value)
    onnx.save(model, str(path))


# ----------------------------------------------------------------------------- self-check


def _session(path: Path, kept: dict[Path, Any] | None = None):
    """An onnxruntime session of the graph ``path``: the one ``kept`` (an export's sessions,
    by graph file) holds, else a new one, which ``kept`` then holds. Loading is the costly part
    of a check: each graph of an export is loaded once, by its own check, and the int8 check
    compares the quantized graph with that same session."""
    if kept is not None and path in kept:
        return kept[path]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if kept is not None:
        kept[path] = session
    return session


def _check_io(session, path: Path, inputs: Sequence[tuple[str, str]],
              outputs: Sequence[tuple[str, str]]) -> None:
    """Names and element types of the graph's inputs and outputs, in order."""
    got_in = [(i.name, i.type) for i in session.get_inputs()]
    got_out = [(o.name, o.type) for o in session.get_outputs()]
    if got_in != list(inputs) or got_out != list(outputs):
        raise OnnxExportError(
            f"{path.name}: inputs/outputs {got_in} -> {got_out}, expected {list(inputs)} -> "
            f"{list(outputs)} (sherpa-onnx indexes them by position)")


def _metadata(session) -> dict[str, str]:
    """The metadata of a written graph, as sherpa-onnx's loaders read it, from the onnxruntime
    ``session`` its own check holds.

    Each graph is loaded into onnxruntime once per export (loading is the costly part): a check
    that needs another graph's metadata (the joiner's needs the decoder's, the NeMo decoder's
    and joiner's the encoder's) is handed what that graph's check read here. Reading it from
    the session rather than with ``onnx.load`` reads it as the loaders do, at no extra cost.
    """
    return dict(session.get_modelmeta().custom_metadata_map)


def _metadata_int(path: Path, key: str, meta: dict[str, str]) -> int:
    """The integer that sherpa-onnx's loader reads from the metadata ``key`` of the written graph
    ``path`` (``meta``: that graph's metadata, from :func:`_metadata`): the self-check builds
    sherpa's inputs from it, as the loader does.

    Raises:
        OnnxExportError: naming the graph and the key, when it is missing or no integer.
    """
    value = meta.get(key)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise OnnxExportError(f"{path.name}: metadata {key} is {value!r}; sherpa-onnx reads an "
                              "integer there") from None


def _run(session, path: Path, feed: dict[str, np.ndarray], what: str) -> list[np.ndarray]:
    """``session.run`` on sherpa-onnx's inputs; onnxruntime's own errors name ``path``."""
    try:
        return session.run(None, feed)
    except Exception as err:  # onnxruntime's error types; name the graph and what was fed
        shapes = [f"{name} {tuple(value.shape)}" for name, value in feed.items()]
        if len(shapes) > 4:  # a streaming encoder has 4 states per layer
            shapes = [*shapes[:4], f"... ({len(shapes)} inputs)"]
        raise OnnxExportError(f"{path.name}: onnxruntime fails on {what} "
                              f"({', '.join(shapes)}): {err}") from err


def _compare(path: Path, what: str, got: np.ndarray, want: Tensor) -> float:
    want_np = want.detach().numpy()
    if got.shape != want_np.shape:
        raise OnnxExportError(f"{path.name}: {what} has shape {got.shape}, PyTorch {want_np.shape}")
    if not np.isfinite(got).all():
        raise OnnxExportError(f"{path.name}: {what} is not finite")
    diff = np.abs(got.astype(np.float64) - want_np)
    bad = diff > ATOL + RTOL * np.abs(want_np)
    if bad.any():
        raise OnnxExportError(
            f"{path.name}: {what} differs from PyTorch by up to {diff.max():.3g} "
            f"({int(bad.sum())} values beyond {ATOL:g} + {RTOL:g}|x|): the export is wrong")
    return float(diff.max()) if diff.size else 0.0


def _check_features(fbank: FbankConfig, lengths: Sequence[int], seed: int = 0) -> list[Tensor]:
    """Log-mel features of noise bursts, ``lengths`` frames each (speech-like value ranges), by
    the recognition front end of ``fbank`` (no training dither: sherpa-onnx has none)."""
    fbank = fbank.for_recognition()
    rng = np.random.default_rng(seed)
    hop = fbank.hop_samples
    feats = []
    for frames in lengths:
        samples = frames * hop
        envelope = np.repeat(rng.uniform(0.0, 0.3, size=samples // 800 + 1), 800)[:samples]
        wave = (rng.standard_normal(samples) * envelope).astype(np.float32)
        feats.append(compute_fbank(wave, fbank.sample_rate, fbank)[:frames])
    return feats


def _padded(feats: Sequence[Tensor], pad_value: float = PAD_VALUE) -> tuple[Tensor, Tensor]:
    lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
    x = torch.nn.utils.rnn.pad_sequence(list(feats), batch_first=True, padding_value=pad_value)
    return x, lens


@torch.no_grad()
def _check_offline(path: Path, in_names, out_names, reference, fbank: FbankConfig,
                   channels_first: bool = False, pad_value: float = PAD_VALUE,
                   kept: dict[Path, Any] | None = None) -> tuple[str, dict[str, str]]:
    """Batches of padded features against the ``reference`` on each utterance alone.

    Returns:
        The line of the report and the graph's metadata, as onnxruntime read it.
    """
    session = _session(path, kept)
    _check_io(session, path, [(in_names[0], "tensor(float)"), (in_names[1], "tensor(int64)")],
              [(out_names[0], "tensor(float)"), (out_names[1], "tensor(int64)")])
    worst = 0.0
    # a batch of lengths far from the export example's, then one of inputs shorter than the
    # subsampling's receptive field (no output frame; a batch that short is not padded longer)
    batches = ((211, 150, 57), (6, 3))
    for lengths in batches:
        x, x_lens = _padded(_check_features(fbank, lengths), pad_value)
        feed_x = x.transpose(1, 2).contiguous() if channels_first else x
        try:
            got, got_lens = session.run(None, {in_names[0]: feed_x.numpy(),
                                               in_names[1]: x_lens.numpy()})
        except Exception as err:  # onnxruntime's own error types; name the input
            raise OnnxExportError(f"{path.name}: onnxruntime fails on a batch of "
                                  f"{list(lengths)} frames: {err}") from err
        if channels_first:
            got = got.transpose(0, 2, 1)
        most = 0
        for b in range(len(lengths)):  # each utterance alone in PyTorch: padding must not matter
            want, want_lens = reference(x[b: b + 1, : lengths[b]], x_lens[b: b + 1])
            n = int(want_lens[0])
            if int(got_lens[b]) != n:
                raise OnnxExportError(f"{path.name}: {out_names[1]}[{b}] = {int(got_lens[b])} "
                                      f"for {lengths[b]} frames, PyTorch {n}")
            worst = max(worst, _compare(path, out_names[0], got[b, :n], want[0, :n]))
            most = max(most, n)
        if got.shape[1] != most:  # as many frames as PyTorch: no length frozen in the trace
            raise OnnxExportError(f"{path.name}: {out_names[0]} has {got.shape[1]} frames for "
                                  f"a batch of {list(lengths)} frames, PyTorch {most}")
    return (f"{path.name}: batches of frames {' and '.join(map(str, map(list, batches)))} "
            f"(padded with {pad_value:.2f}) vs PyTorch alone: max |diff| {worst:.2e}",
            _metadata(session))


@torch.no_grad()
def _check_decoder(path: Path, head: TransducerHead,
                   kept: dict[Path, Any] | None = None) -> tuple[str, dict[str, str]]:
    """The contexts sherpa-onnx builds, ``context_size`` (the graph's metadata) tokens wide,
    against our predictor's steps; its metadata ``vocab_size`` must be the model's.

    Returns:
        The line of the report and the graph's metadata, as onnxruntime read it.
    """
    session = _session(path, kept)
    _check_io(session, path, [("y", "tensor(int64)")], [("decoder_out", "tensor(float)")])
    predictor = head.predictor
    meta = _metadata(session)
    vocab = _metadata_int(path, "vocab_size", meta)
    if vocab != head.vocab_size:
        raise OnnxExportError(f"{path.name}: metadata vocab_size {vocab}, the model has "
                              f"{head.vocab_size} tokens (sherpa-onnx reads the joiner's logits "
                              "with it)")
    context = _metadata_int(path, "context_size", meta)  # the width of the y sherpa-onnx builds
    if context != predictor.context_size:
        raise OnnxExportError(f"{path.name}: metadata context_size {context}, the predictor's "
                              f"is {predictor.context_size}")
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, vocab, (16, context), generator=generator)
    start = torch.tensor([[-1] * (context - 1) + [head.blank_id]])  # sherpa's start context
    y = torch.cat([start, rows])
    # reference: our predictor's one-token step from the context before the last token
    state = predictor.init_state(y.shape[0], "cpu")
    state = dataclasses.replace(state, context=y[:, :-1].clamp(min=0))
    pred, _ = predictor.step(y[:, -1].clamp(min=0), state)
    want = head.joiner.project_predictor(pred)
    (got,) = _run(session, path, {"y": y.numpy()}, "the contexts sherpa-onnx builds")
    worst = _compare(path, "decoder_out", got, want)
    initial = head.joiner.project_predictor(
        predictor.step(torch.tensor([head.blank_id]), predictor.init_state(1, "cpu"))[0])
    worst = max(worst, _compare(path, "decoder_out of the start context", got[:1], initial))
    return (f"{path.name}: {y.shape[0]} contexts incl. the start context "
            f"{start[0].tolist()}: max |diff| {worst:.2e}", meta)


@torch.no_grad()
def _check_joiner(path: Path, decoder_path: Path, decoder_meta: dict[str, str],
                  head: TransducerHead, joiner_dim: int,
                  kept: dict[Path, Any] | None = None) -> str:
    """5 random frame pairs; the logits must be as many as the ``vocab_size`` of the decoder's
    metadata ``decoder_meta`` (sherpa-onnx's row stride)."""
    session = _session(path, kept)
    _check_io(session, path, [("encoder_out", "tensor(float)"), ("decoder_out", "tensor(float)")],
              [("logit", "tensor(float)")])
    generator = torch.Generator().manual_seed(0)
    enc = torch.randn(5, joiner_dim, generator=generator)
    dec = torch.randn(5, joiner_dim, generator=generator)
    (got,) = _run(session, path, {"encoder_out": enc.numpy(), "decoder_out": dec.numpy()},
                  "frames")
    vocab = _metadata_int(decoder_path, "vocab_size", decoder_meta)
    if got.shape[-1] != vocab:
        raise OnnxExportError(f"{path.name}: logit has {got.shape[-1]} columns, the vocab_size "
                              f"of {decoder_path.name} {vocab}")
    worst = _compare(path, "logit", got, head.joiner.join(enc, dec))
    return f"{path.name}: 5 frames: max |diff| {worst:.2e}"


@torch.no_grad()
def _check_nemo_decoder(path: Path, encoder_path: Path, encoder_meta: dict[str, str],
                        head: TransducerHead, kept: dict[Path, Any] | None = None) -> str:
    """sherpa's first call (nemo blank, zero states, both ``(pred_rnn_layers, N, pred_hidden)``
    from the encoder's metadata ``encoder_meta``, as its loader makes them), then token after
    token with the states carried, against our predictor's steps."""
    session = _session(path, kept)
    names = ["targets", "target_length", "states_0", "states_1"]
    _check_io(session, path, list(zip(names, ["tensor(int32)"] * 2 + ["tensor(float)"] * 2)),
              list(zip(["decoder_out", "decoder_out_length", "next_states_0", "next_states_1"],
                       ["tensor(float)", "tensor(int32)", "tensor(float)", "tensor(float)"])))
    vocab = head.vocab_size
    generator = torch.Generator().manual_seed(0)
    ours = [0] + torch.randint(0, vocab, (7,), generator=generator).tolist()  # blank, 7 tokens
    batch = 2  # two rows in step: the second row runs the same ids shifted by one
    state = head.predictor.init_state(batch, "cpu")
    shape = (_metadata_int(encoder_path, "pred_rnn_layers", encoder_meta), batch,
             _metadata_int(encoder_path, "pred_hidden", encoder_meta))
    states = [np.zeros(shape, np.float32), np.zeros(shape, np.float32)]
    worst = 0.0
    for step in range(len(ours) - 1):
        ids = torch.tensor([ours[step], ours[step + 1] if step else 0])
        nemo = torch.where(ids == 0, vocab - 1, ids - 1).to(torch.int32)[:, None]
        got = _run(session, path, {"targets": nemo.numpy(),
                                   "target_length": np.ones(batch, np.int32),
                                   "states_0": states[0], "states_1": states[1]},
                   f"the states sherpa-onnx makes from {encoder_path.name}'s pred_rnn_layers "
                   "and pred_hidden")
        pred, state = head.predictor.step(ids, state)
        want = head.joiner.project_predictor(pred)
        worst = max(worst, _compare(path, f"decoder_out (step {step})", got[0][:, :, 0], want))
        states = got[2:]
    return (f"{path.name}: {len(ours) - 1} steps of 2 rows, states carried, blank mapped from "
            f"the last id: max |diff| {worst:.2e}")


@torch.no_grad()
def _check_nemo_joiner(path: Path, encoder_path: Path, encoder_meta: dict[str, str],
                       head: TransducerHead, joiner_dim: int,
                       kept: dict[Path, Any] | None = None) -> str:
    """5 random frame pairs; the token logits come first, as many as the encoder's metadata
    ``encoder_meta`` ``vocab_size`` + 1 (sherpa-onnx's count, blank included), then the
    skips."""
    session = _session(path, kept)
    _check_io(session, path, [("encoder_out", "tensor(float)"), ("decoder_out", "tensor(float)")],
              [("logits", "tensor(float)")])
    generator = torch.Generator().manual_seed(0)
    enc = torch.randn(5, joiner_dim, generator=generator)
    dec = torch.randn(5, joiner_dim, generator=generator)
    (got,) = _run(session, path, {"encoder_out": enc[:, :, None].numpy(),
                                  "decoder_out": dec[:, :, None].numpy()}, "frames")
    logits = head.joiner.join(enc, dec)
    vocab = head.vocab_size
    tokens = _metadata_int(encoder_path, "vocab_size", encoder_meta)  # NeMo's: without blank
    if tokens + 1 != vocab:
        raise OnnxExportError(f"{encoder_path.name}: metadata vocab_size {tokens}, the model has "
                              f"{vocab - 1} tokens besides blank")
    worst = _compare(path, "token logits (blank last)", got[:, :vocab],
                     torch.cat([logits[:, 1:vocab], logits[:, :1]], dim=1))
    for k, duration in enumerate(head.durations):
        worst = max(worst, _compare(path, f"logit of skip {duration}", got[:, vocab + duration],
                                    logits[:, vocab + k]))
    return f"{path.name}: 5 frames, blank last, durations by skip: max |diff| {worst:.2e}"


@torch.no_grad()
def _check_streaming(
    path: Path, wrapper: StreamingEncoder, encoder: ChunkedEncoder, fbank: FbankConfig,
    chunk_size: int, left_chunks: int, kept: dict[Path, Any] | None = None,
) -> str:
    """Two streams, the second starting one chunk later, batched whenever both run; each
    against our own chunk-by-chunk streaming (``forward_chunk``) alone."""
    session = _session(path, kept)
    in_names, out_names = _streaming_names(wrapper.num_layers)
    dtypes = ["tensor(float)"] * (len(in_names) - 1) + ["tensor(int64)"]
    _check_io(session, path, list(zip(in_names, dtypes)), list(zip(out_names, dtypes)))
    # sherpa's windows: T frames every decode_chunk_len, as its loader reads them
    meta = _metadata(session)
    frames, shift = _metadata_int(path, "T", meta), _metadata_int(path, "decode_chunk_len", meta)
    ours = chunk_frames(chunk_size)
    num_chunks = max(4, left_chunks + 2)  # beyond the cache size: old frames must roll out
    delays = (0, 1)
    length = max(frames, ours[0]) + max(shift, ours[1]) * (num_chunks - 1)
    feats = _check_features(fbank, [length] * 2, seed=1)
    # PyTorch: each stream alone, fed exactly as the runtime feeds it (4c + 3, then 4c frames)
    want: list[list[Tensor]] = []
    for stream in range(2):
        state = encoder.init_state(1, "cpu", left_chunks=left_chunks, chunk_size=chunk_size)
        outs, start = [], 0
        for _ in range(num_chunks):
            take = int(encoder.frames_needed(state, chunk_size)[0])
            chunk = feats[stream][start: start + take][None]
            enc, _, state = encoder.forward_chunk(chunk, torch.tensor([take]), state)
            outs.append(wrapper.projection(enc)[0])
            start += take
        want.append(outs)
    # onnxruntime: sherpa's windows (frames k*4c .. k*4c + 4c + 3), states stacked on axis 0
    init = _sherpa_init_states(path, meta)
    if len(init) != len(in_names) - 1:
        raise OnnxExportError(f"{path.name}: metadata num_hidden_layers "
                              f"{meta.get('num_hidden_layers')!r}, the graph has "
                              f"{wrapper.num_layers} layers of states")
    states: dict[int, list[np.ndarray]] = {}
    worst = 0.0
    for tick in range(num_chunks + max(delays)):
        active = [s for s in range(2) if 0 <= tick - delays[s] < num_chunks]
        for s in active:
            if s not in states:
                states[s] = init
        x = np.stack([feats[s][(tick - delays[s]) * shift:][:frames].numpy() for s in active])
        feed = {"x": x}
        for i, name in enumerate(in_names[1:]):
            feed[name] = np.concatenate([states[s][i] for s in active], axis=0)
        result = _run(session, path, feed, f"windows of T={frames} frames and the states "
                      "sherpa-onnx makes from the metadata")
        for row, s in enumerate(active):
            k = tick - delays[s]
            worst = max(worst, _compare(path, f"encoder_out (stream {s}, chunk {k})",
                                        result[0][row], want[s][k]))
            states[s] = [r[row: row + 1] for r in result[1:]]
            if int(states[s][-1][0]) != (k + 1) * chunk_size:
                raise OnnxExportError(f"{path.name}: processed_lens {int(states[s][-1][0])} "
                                      f"after {k + 1} chunks of {chunk_size}")
    num_states = STATES_PER_LAYER * wrapper.num_layers + 1
    return (f"{path.name}: 2 streams x {num_chunks} chunks of {frames} frames (shift {shift}), "
            f"{num_states} states carried, the 2nd stream one chunk behind and batched with the "
            f"1st: max |diff| {worst:.2e} vs forward_chunk")


def _sherpa_init_states(path: Path, meta: dict[str, str]) -> list[np.ndarray]:
    """The zero states of one new stream as sherpa-onnx's ``ebranchformer`` loader makes them
    from the metadata ``meta`` of ``path`` (``GetEncoderInitStates``), ``processed_lens``
    last."""
    def get(key: str) -> int:
        return _metadata_int(path, key, meta)

    kv = (1, get("num_heads"), get("left_context_len"), get("head_dim"))
    conv = (1, get("intermediate_size") // 2, get("csgu_kernel_size") - 1)
    fusion = (1, 2 * get("hidden_size"), get("merge_conv_kernel") - 1)
    layer = [np.zeros(shape, np.float32) for shape in (kv, kv, conv, fusion)]
    return layer * get("num_hidden_layers") + [np.zeros(1, np.int64)]


# ----------------------------------------------------------------------------- int8, files


def _quantize_all(report: ExportReport, out: Path, kept: dict[Path, Any]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name in list(report.metadata):
        source = out / name
        target = out / name.replace(".onnx", ".int8.onnx")
        ops = ["MatMul", "Gather"] if name == "decoder.onnx" else ["MatMul"]
        with warnings.catch_warnings(), _quiet_root_logger():
            warnings.simplefilter("ignore")
            try:
                quantize_dynamic(str(source), str(target), op_types_to_quantize=ops,
                                 weight_type=QuantType.QInt8)
            except Exception as err:  # the quantizer raises many kinds; name the graph
                raise OnnxExportError(f"{target.name}: onnxruntime's quantize_dynamic failed "
                                      f"on {source.name}: {err}") from err
        _add_metadata(target, report.metadata[name])  # kept by quantize_dynamic; made sure
        report.checks.append(_check_int8(source, target, kept))


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantizer logs every tensor at INFO on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING + 1))
    try:
        yield
    finally:
        root.setLevel(level)


def _check_int8(source: Path, target: Path, kept: dict[Path, Any] | None = None) -> str:
    """Same inputs and outputs as the fp32 graph; every output of the shape of the fp32 graph's
    and finite on random inputs; the largest difference of any output is reported.

    Args:
        source: the float graph.
        target: its quantized copy.
        kept: the export's sessions (:func:`_session`): the float graph's, loaded by its own
            self-check, is used, not loaded again.

    Raises:
        OnnxExportError: naming the graph and the output that differs in shape or is not
            finite.
    """
    fp32, int8 = _session(source, kept), _session(target)
    want = [(i.name, i.type) for i in fp32.get_inputs()]
    _check_io(int8, target, want, [(o.name, o.type) for o in fp32.get_outputs()])
    feed = {}
    rng = np.random.default_rng(0)
    lengths = {"x_lens": 63, "length": 63, "target_length": 1}
    for inp in fp32.get_inputs():
        shape = [d if isinstance(d, int) else (2 if d == "N" else 63) for d in inp.shape]
        if inp.type in ("tensor(int64)", "tensor(int32)"):
            dtype = np.int64 if inp.type == "tensor(int64)" else np.int32
            if inp.name in lengths:
                feed[inp.name] = np.full(shape, lengths[inp.name], dtype=dtype)
            else:  # token ids, processed_lens
                feed[inp.name] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            feed[inp.name] = rng.standard_normal(shape).astype(np.float32)
    names = [o.name for o in fp32.get_outputs()]
    worst, worst_name = 0.0, names[0]
    # every output: a streaming encoder's next states are as much its result as its frames
    for name, a, b in zip(names, fp32.run(None, feed), int8.run(None, feed)):
        if b.shape != a.shape:
            raise OnnxExportError(f"{target.name}: output {name} has shape {b.shape}, "
                                  f"{source.name} {a.shape}")
        if not np.isfinite(b).all():
            raise OnnxExportError(f"{target.name}: output {name} is not finite")
        diff = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
        if diff > worst:
            worst, worst_name = diff, name
    size = target.stat().st_size / source.stat().st_size
    return (f"{target.name}: same inputs/outputs as {source.name}, max |diff| {worst:.2e} "
            f"({worst_name}, of {len(names)} outputs) on random inputs, {size:.0%} of its size")


def write_bpe_vocab(tokenizer: BpeTokenizer, path: Path) -> None:
    """``piece<TAB>score`` lines in id order: the ``bpe.vocab`` with which sherpa-onnx encodes
    hotword phrases into pieces (``modeling_unit="bpe"``, ``bpe_vocab=``).

    sherpa-onnx reads it with simple-sentencepiece, which splits a phrase at spaces, prefixes
    each word with ``▁`` and picks the segmentation into listed pieces of the largest total
    score; the pieces are then looked up in ``tokens.txt`` by name, so the line order is not
    used. The scores are sentencepiece's own (for a BPE model, earlier merges score higher).
    """
    lines = (f"{p}\t{s}\n" for p, s in zip(tokenizer.pieces(), tokenizer.piece_scores()))
    path.write_text("".join(lines), encoding="utf-8")


def _write_tokens(package: ModelPackage, path: Path, blank_last: bool = False) -> None:
    """``piece id`` lines (:func:`asr.tokenizers.base.write_tokens_file`); ``blank_last``: the
    NeMo path's ids (ours - 1, blank last)."""
    pieces = package.tokenizer.pieces()
    if blank_last:
        pieces = pieces[1:] + pieces[:1]
    write_tokens_file(path, pieces)


def _write_report(report: ExportReport, package: ModelPackage, path: Path) -> None:
    data: dict[str, Any] = {
        "layout": report.layout,
        "head": report.head,
        "package": str(package.directory),
        "asr_version": __version__,
        "files": report.files,
        "loader": report.loader,
        "features": {**dataclasses.asdict(package.config.data.fbank.for_recognition()),
                     "samples": "float in [-1, 1]"},
        "tolerance": {"atol": ATOL, "rtol": RTOL},
        "checks": report.checks,
        "notes": report.notes,
        "search": report.search,
        "metadata": report.metadata,
    }
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n",
                    encoding="utf-8")
