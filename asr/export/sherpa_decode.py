"""Decoding with sherpa-onnx: an exported directory (:mod:`asr.export.sherpa`) loaded in the
sherpa-onnx runtime, for test-set WERs (``asr decode-onnx``) and benchmarks.

:func:`load_recognizer` reads ``export.json`` to pick the loader (offline transducer, streaming
transducer, CTC) and the fp32 or int8 graphs. :meth:`SherpaRecognizer.decode` decodes waveforms
as sherpa-onnx's own examples do: offline, one ``decode_streams`` call per batch; streaming, all
streams fed at once, then ``decode_streams`` over the ready streams until none is ready.

**Flushing a stream.** sherpa-onnx decodes a chunk only when one feature frame more than the
chunk reads has arrived, and never decodes a partial last chunk, so a streaming input must be
padded before ``input_finished`` (sherpa-onnx pads nothing itself). Its examples append 0.5 or
0.66 s of zeros; we append
:func:`flush_samples` (the least that makes it decode every encoder frame our runtime decodes)
of :func:`room_tone` (the input's quietest stretch, repeated), because digital silence is an
input a model trained on recorded or noisy audio has never heard: its log-mel frames sit at the
energy floor, far below any background noise, and the main-job model of mini_tts answered them
by appending a sub-word piece to the last word in 21 of 100 test utterances (+1.5 WER), which
our own runtime does too when given the same padded audio (docs/ONNX.md).

Example:
    >>> recognizer = load_recognizer("exp/onnx-streaming", int8=True)
    >>> [result] = recognizer.decode([samples])
    >>> result.text, result.token_ids
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asr.config import parse_override
from asr.constants import EXPORT_REPORT_FILE, METADATA_FILE
from asr.data.dataset import DataError
from asr.data.filtering import (
    check_cut_audio,
    check_cut_files,
    cut_files,
    cut_text,
    error_reason,
    unreadable_cut_error,
)
from asr.data.librispeech import load_test_part
from asr.decoding.config import SEARCH_PREFIX, SearchConfig, override_search
from asr.decoding.context_graph import load_hotwords
from asr.encoders.subsampling import subsampled_length
from asr.export.graphs import chunk_frames
from asr.export.sherpa import BPE_VOCAB
from asr.features.fbank import FbankConfig, num_frames
from asr.fileio import read_json_object
from asr.run.evaluate import Recognition
from asr.tokenizers.base import read_tokens_file

if TYPE_CHECKING:  # pragma: no cover
    from lhotse import CutSet

__all__ = ["SHERPA_DECODING_METHODS", "SherpaRecognizer", "SherpaResult", "check_part_audio",
           "decode_part_sherpa", "flush_samples", "load_recognizer", "room_tone",
           "sherpa_search_options"]

logger = logging.getLogger(__name__)

_WORD_START = "\u2581"

#: Length of the stretch :func:`room_tone` repeats, seconds.
ROOM_TONE_SECONDS = 0.1

#: sherpa-onnx's searches (``decoding_method``) for our layouts.
SHERPA_DECODING_METHODS = ("greedy_search", "modified_beam_search")
#: sherpa-onnx's defaults of ``max_active_paths`` and ``hotwords_score``.
DEFAULT_MAX_ACTIVE_PATHS = 4
DEFAULT_HOTWORDS_SCORE = 1.5

#: Our searcher names and roles -> the sherpa-onnx ``decoding_method`` that searches as they do
#: (transducers: ``transducer_beam`` is modified beam search, as sherpa-onnx's).
_SHERPA_SEARCHERS = {"greedy": "greedy_search", "transducer_greedy": "greedy_search",
                     "beam": "modified_beam_search", "transducer_beam": "modified_beam_search"}
#: ``search.*`` fields -> the :func:`load_recognizer` argument that is sherpa-onnx's same setting.
_SHERPA_SEARCH_FIELDS = {"blank_penalty": "blank_penalty", "beam_size": "max_active_paths",
                         "hotwords_file": "hotwords_file", "hotwords_score": "hotwords_score"}


def flush_samples(num_samples: int, chunk_size: int, fbank: FbankConfig) -> int:
    """Samples to append to a streaming input of ``num_samples`` so that sherpa-onnx decodes
    every encoder frame our runtime decodes for it, and no more chunks than that.

    Our encoder makes ``T' = subsampled_length(T)`` frames of ``T`` feature frames, in
    ``K = ceil(T' / c)`` chunks of ``c = chunk_size``. sherpa-onnx reads windows of
    ``4c + 3`` feature frames every ``4c`` frames (:func:`asr.export.graphs.chunk_frames`) and
    decodes window k only when more than ``4ck + 4c + 3`` frames are ready
    (``OnlineRecognizerTransducerImpl::IsReady``), so it needs ``4cK + 4`` frames; each frame
    hop appended adds one frame (``snip_edges=False``).
    """
    frames = num_frames(num_samples, fbank)
    chunks = -(-subsampled_length(frames) // chunk_size)
    if chunks == 0:
        return 0
    window, shift = chunk_frames(chunk_size)
    needed = (chunks - 1) * shift + window + 1
    return max(0, needed - frames) * fbank.hop_samples


def room_tone(wave: np.ndarray, num_samples: int, window: int) -> np.ndarray:
    """(num_samples,) float32: the quietest ``window``-sample stretch of ``wave`` (least mean
    square, searched every ``window // 4`` samples), repeated; zeros for an empty ``wave``."""
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if num_samples <= 0 or wave.shape[0] == 0:
        return np.zeros(max(0, num_samples), np.float32)
    window = max(1, min(window, wave.shape[0]))
    energy = np.concatenate([[0.0], np.cumsum(wave.astype(np.float64) ** 2)])
    starts = np.arange(0, wave.shape[0] - window + 1, max(1, window // 4))
    start = int(starts[np.argmin(energy[starts + window] - energy[starts])])
    return np.resize(wave[start: start + window], num_samples).astype(np.float32)


@dataclass(frozen=True)
class SherpaResult:
    """One decoded waveform: text (words separated by single spaces) and token ids."""

    text: str
    token_ids: tuple[int, ...]


class SherpaRecognizer:
    """A sherpa-onnx recognizer for an exported directory.

    Args:
        recognizer: ``sherpa_onnx.OfflineRecognizer`` or ``OnlineRecognizer``.
        layout: ``transducer``, ``streaming_transducer`` (an online recognizer), ``ctc`` or
            ``tdt``.
        pieces: the tokens.txt pieces in id order.
        sample_rate: the model's sample rate.
        fbank: sherpa-onnx's front end for the model (the export's feature options).
        chunk_size: encoder frames per chunk of a streaming layout (0 otherwise).
        decoding_method: sherpa-onnx's search the recognizer was built with.
        blank_penalty: the blank penalty it was built with.
    """

    def __init__(self, recognizer, layout: str, pieces: Sequence[str], sample_rate: int,
                 fbank: FbankConfig, chunk_size: int = 0,
                 decoding_method: str = "greedy_search", blank_penalty: float = 0.0) -> None:
        self.recognizer = recognizer
        self.decoding_method = decoding_method
        self.blank_penalty = blank_penalty
        self.layout = layout
        self.streaming = layout == "streaming_transducer"
        self.sample_rate = sample_rate
        self.fbank = fbank
        self.chunk_size = chunk_size
        self.pieces = list(pieces)
        # the NeMo layout (TDT) numbers tokens one below ours, blank last
        shift = 1 if layout == "tdt" else 0
        self._ids = {piece: (i + shift) % len(pieces) for i, piece in enumerate(pieces)}

    def token_ids(self, tokens: Sequence[str]) -> tuple[int, ...]:
        """sherpa-onnx's result tokens (a leading ``▁`` shown as a space) -> ids."""
        return tuple(self._ids[_WORD_START + t[1:] if t.startswith(" ") else t] for t in tokens)

    def decode(self, waves: Sequence[np.ndarray], sample_rate: int | None = None,
               batch_size: int = 32) -> list[SherpaResult]:
        """Decodes (N,) float waveforms in [-1, 1], ``batch_size`` streams at a time."""
        rate = sample_rate or self.sample_rate
        results: list[SherpaResult] = []
        for start in range(0, len(waves), max(1, batch_size)):
            batch = waves[start: start + max(1, batch_size)]
            results += (self._streaming if self.streaming else self._offline)(batch, rate)
        return results

    def _result(self, result) -> SherpaResult:
        return SherpaResult(" ".join(result.text.split()), self.token_ids(result.tokens))

    def _offline(self, waves: Sequence[np.ndarray], rate: int) -> list[SherpaResult]:
        streams = []
        for wave in waves:
            stream = self.recognizer.create_stream()
            stream.accept_waveform(rate, np.asarray(wave, dtype=np.float32))
            streams.append(stream)
        self.recognizer.decode_streams(streams)
        return [self._result(s.result) for s in streams]

    def flush(self, wave: np.ndarray) -> np.ndarray:
        """The samples (at the model rate) to append to the streaming input ``wave`` before
        ``input_finished`` (see the module docstring)."""
        count = flush_samples(wave.shape[0], self.chunk_size, self.fbank)
        return room_tone(wave, count, round(ROOM_TONE_SECONDS * self.sample_rate))

    def _streaming(self, waves: Sequence[np.ndarray], rate: int) -> list[SherpaResult]:
        if rate != self.sample_rate:
            raise ValueError(f"streaming decode takes audio at {self.sample_rate} Hz, got {rate}")
        streams = []
        for wave in waves:
            wave = np.asarray(wave, dtype=np.float32).reshape(-1)
            stream = self.recognizer.create_stream()
            stream.accept_waveform(rate, wave)
            tail = self.flush(wave)
            if tail.shape[0]:
                stream.accept_waveform(rate, tail)
            stream.input_finished()
            streams.append(stream)
        while True:
            ready = [s for s in streams if self.recognizer.is_ready(s)]
            if not ready:
                break
            self.recognizer.decode_streams(ready)
        return [self._result(self.recognizer.get_result_all(s)) for s in streams]


def load_recognizer(
    onnx_dir: str | Path, int8: bool = False, num_threads: int = 1,
    decoding_method: str = "greedy_search", max_active_paths: int | None = None,
    hotwords_file: str | Path | None = None, hotwords_score: float | None = None,
    blank_penalty: float | None = None, online_options: dict | None = None,
) -> SherpaRecognizer:
    """The sherpa-onnx recognizer of an ``asr export-onnx`` directory.

    Args:
        onnx_dir: the directory.
        int8: the ``*.int8.onnx`` graphs.
        num_threads: onnxruntime threads.
        decoding_method: ``greedy_search`` or ``modified_beam_search`` (transducers).
        max_active_paths: the beam of ``modified_beam_search`` (default 4); an error with
            ``greedy_search``, which has none.
        hotwords_file: a hotword file (the format of :mod:`asr.decoding.context_graph`) for
            sherpa-onnx's own biasing: transducer layouts with ``modified_beam_search``; its
            phrases are split into pieces with the directory's ``bpe.vocab``.
        hotwords_score: sherpa-onnx's per-token boost of a phrase without its own score
            (default 1.5); an error without ``hotwords_file``.
        blank_penalty: subtracted from the blank logit (transducers), as ``search.blank_penalty``;
            None: the export's (``export.json``'s ``search``, its package's
            ``search.blank_penalty``; 0 for an export that records none), so that sherpa-onnx
            decodes as our runtime decodes the package.
        online_options: more arguments of ``sherpa_onnx.OnlineRecognizer.from_transducer`` for a
            streaming export (e.g. its endpoint rules).

    Raises:
        FileNotFoundError: without ``export.json``, ``tokens.txt`` or the graphs asked for
            (int8 ones exist only when exported with ``--int8``), a missing ``hotwords_file``,
            or hotwords without ``bpe.vocab``.
        ValueError: an ``export.json`` that is corrupt or lacks a field (naming it); a
            ``tokens.txt`` with a line other than ``piece id`` (ids in order) or with another
            number of pieces than the graphs' ``vocab_size`` (naming it); hotwords with
            a CTC layout or greedy search; a hotword file ``asr decode`` would refuse (a bad
            ``:SCORE``) or with a phrase the model's pieces cannot spell (naming it); a CTC layout
            with another ``decoding_method`` or a ``blank_penalty``; a negative
            ``blank_penalty`` (sherpa-onnx would ignore it); a ``decoding_method``
            sherpa-onnx has not; ``max_active_paths`` with greedy search or < 1 with a beam search;
            ``hotwords_score`` without ``hotwords_file`` (an option set is applied or refused,
            never dropped); graphs sherpa-onnx cannot load.
    """
    import sherpa_onnx

    onnx_dir = Path(onnx_dir)
    report = _read_report(onnx_dir / EXPORT_REPORT_FILE)
    suffix = ".int8.onnx" if int8 else ".onnx"
    layout = report["layout"]
    if decoding_method not in SHERPA_DECODING_METHODS:
        raise ValueError(f"decoding_method {decoding_method!r} (--decoding-method): sherpa-onnx "
                         f"searches with one of {list(SHERPA_DECODING_METHODS)}")
    if decoding_method == "greedy_search" and max_active_paths is not None:
        raise ValueError(f"max_active_paths {max_active_paths} (--max-active-paths): the beam of "
                         "modified_beam_search; greedy_search has none: choose "
                         "modified_beam_search (--decoding-method) or drop it")
    if hotwords_file is None and hotwords_score is not None:
        raise ValueError(f"hotwords_score {hotwords_score} (--hotwords-score): the boost of the "
                         "phrases of a hotwords file; give one (--hotwords-file) or drop it")
    if layout == "ctc" and decoding_method != "greedy_search":
        raise ValueError(f"decoding_method {decoding_method!r} (--decoding-method): {onnx_dir} "
                         "is a CTC export, which sherpa-onnx decodes with greedy_search only")
    if blank_penalty is None:
        blank_penalty = _recorded_blank_penalty(report, onnx_dir / EXPORT_REPORT_FILE)
    if blank_penalty < 0:  # its searches subtract it only when > 0
        raise ValueError(f"blank_penalty {blank_penalty:g}: sherpa-onnx applies a positive blank "
                         "penalty only (a negative one, a blank bonus, it would ignore)")
    if layout == "ctc" and blank_penalty:
        raise ValueError(f"blank_penalty {blank_penalty} (--blank-penalty): {onnx_dir} is a CTC "
                         "export; the blank penalty is a transducer search option")
    names = ["model"] if layout == "ctc" else ["encoder", "decoder", "joiner"]
    files = {name: onnx_dir / f"{name}{suffix}" for name in names}
    for path in files.values():
        if not path.is_file():
            hint = " (export with --int8)" if int8 else ""
            raise FileNotFoundError(f"{path}: missing{hint}")
    pieces = _read_pieces(onnx_dir / "tokens.txt", report)
    features = report["features"]
    common = {"tokens": str(onnx_dir / "tokens.txt"), "num_threads": num_threads,
              "sample_rate": int(features["sample_rate"]),
              "feature_dim": int(features["num_mel_bins"]), "decoding_method": decoding_method}
    if decoding_method != "greedy_search":
        if max_active_paths is None:
            max_active_paths = DEFAULT_MAX_ACTIVE_PATHS
        if max_active_paths < 1:  # sherpa-onnx crashes (SIGSEGV) on 0
            raise ValueError(f"max_active_paths must be >= 1, got {max_active_paths}")
        common["max_active_paths"] = max_active_paths
    if blank_penalty:
        common["blank_penalty"] = blank_penalty
    if hotwords_file is not None:
        if layout == "ctc" or decoding_method != "modified_beam_search":
            raise ValueError("sherpa-onnx's hotwords need a transducer layout and "
                             "decoding_method='modified_beam_search'")
        if not Path(hotwords_file).is_file():
            raise FileNotFoundError(f"hotwords file {hotwords_file} does not exist")
        vocab = onnx_dir / BPE_VOCAB
        if not vocab.is_file():
            raise FileNotFoundError(
                f"{vocab}: missing: sherpa-onnx's hotwords need the bpe.vocab that asr "
                f"export-onnx writes for a BPE tokenizer; a character tokenizer's export has "
                f"none (bias with asr's own beam search instead: asr decode --set "
                f"search.hotwords_file=...), an export made before bpe.vocab existed: export "
                f"it again")
        _check_hotwords(Path(hotwords_file), pieces)
        score = DEFAULT_HOTWORDS_SCORE if hotwords_score is None else hotwords_score
        common |= {"hotwords_file": str(hotwords_file), "hotwords_score": score,
                   "modeling_unit": "bpe", "bpe_vocab": str(vocab)}
    streaming = layout == "streaming_transducer"
    chunk_size = int(report["metadata"]["encoder.onnx"]["chunk_size"]) if streaming else 0
    try:
        if layout == "ctc":
            recognizer = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(
                model=str(files["model"]), **common)
        elif streaming:
            recognizer = sherpa_onnx.OnlineRecognizer.from_transducer(
                encoder=str(files["encoder"]), decoder=str(files["decoder"]),
                joiner=str(files["joiner"]), **common, **(online_options or {}))
        else:
            recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
                encoder=str(files["encoder"]), decoder=str(files["decoder"]),
                joiner=str(files["joiner"]),
                model_type="nemo_transducer" if layout == "tdt" else "transducer", **common)
    except RuntimeError as err:  # onnxruntime's: a truncated or foreign graph
        raise ValueError(f"{onnx_dir}: sherpa-onnx cannot load its graphs: {err}") from err
    fbank = FbankConfig(**{f.name: features[f.name] for f in dataclasses.fields(FbankConfig)
                           if f.name in features})
    return SherpaRecognizer(recognizer, layout, pieces, common["sample_rate"], fbank, chunk_size,
                            decoding_method, blank_penalty)


def sherpa_search_options(searcher: str | None, overrides: Sequence[str]) -> dict[str, Any]:
    """Our ``--searcher`` and ``--set search.FIELD=VALUE`` as the :func:`load_recognizer`
    arguments of sherpa-onnx's same settings (``asr serve --engine sherpa-onnx``): each one
    applied or refused, never dropped.

    ``greedy`` / ``transducer_greedy`` are ``greedy_search`` (one symbol per frame: of
    ``search.max_symbols_per_frame`` only 1 is sherpa-onnx's), ``beam`` / ``transducer_beam``
    ``modified_beam_search``; ``search.beam_size`` is its ``max_active_paths``;
    ``search.blank_penalty``, ``search.hotwords_file`` and ``search.hotwords_score`` are
    sherpa-onnx's own options of those names. No other searcher or option has a sherpa-onnx
    equivalent (its LM is an RNN-LM graph, not our n-gram).

    Args:
        searcher: the ``--searcher`` value, or None (sherpa-onnx's ``greedy_search``).
        overrides: the ``--set`` strings.

    Raises:
        ValueError: naming the searcher or option sherpa-onnx has not, a ``--set`` value
            ``asr decode`` would refuse (:func:`asr.decoding.config.override_search`), or an
            option the search chosen would not use (``search.beam_size`` or
            ``search.hotwords_file`` without ``--searcher beam``, ``search.hotwords_score``
            without ``search.hotwords_file``), each in this command line's words.
    """
    cfg = override_search(SearchConfig(), overrides)  # names and values checked as asr decode's
    options: dict[str, Any] = {}
    if searcher is not None:
        if searcher not in _SHERPA_SEARCHERS:
            raise ValueError(
                f"--searcher {searcher}: sherpa-onnx has no such search; it has "
                f"{' / '.join(_SHERPA_SEARCHERS)} (its greedy_search and modified_beam_search); "
                "serve with --engine pytorch for the others")
        options["decoding_method"] = _SHERPA_SEARCHERS[searcher]
    for text in overrides:
        field = parse_override(text[len(SEARCH_PREFIX):])[0][0]
        if field == "max_symbols_per_frame":
            if cfg.max_symbols_per_frame != 1:
                raise ValueError(f"--set {text}: sherpa-onnx's searches emit at most one symbol "
                                 "per frame; drop it, or serve with --engine pytorch")
            continue
        if field not in _SHERPA_SEARCH_FIELDS:
            raise ValueError(
                f"--set {text}: sherpa-onnx has no search.{field}; it takes search."
                f"{', search.'.join(_SHERPA_SEARCH_FIELDS)} (and search.max_symbols_per_frame=1"
                "): drop it, or serve with --engine pytorch")
        options[_SHERPA_SEARCH_FIELDS[field]] = getattr(cfg, field)
    # what load_recognizer would refuse in decode-onnx's words (--hotwords-file, decoding_method),
    # refused here in those of this command line
    beam = options.get("decoding_method") == "modified_beam_search"
    if "max_active_paths" in options and not beam:
        raise ValueError("--set search.beam_size: the beam of sherpa-onnx's modified_beam_search;"
                         " add --searcher beam, or drop it")
    if "hotwords_file" in options and not beam:
        raise ValueError("--set search.hotwords_file: sherpa-onnx biases only in its "
                         "modified_beam_search; add --searcher beam, or drop it")
    if "hotwords_score" in options and "hotwords_file" not in options:
        raise ValueError("--set search.hotwords_score: the boost of the phrases of "
                         "search.hotwords_file; add --set search.hotwords_file=FILE, or drop it")
    return options


def _read_pieces(path: Path, report: dict) -> list[str]:
    """The pieces of the export's ``tokens.txt`` in line order: ``piece id`` lines, ids 0, 1, ...
    in order, as many as the graphs' vocabulary (``export.json``'s metadata ``vocab_size``,
    which sherpa-onnx's loaders read; the NeMo layout's counts no blank). sherpa-onnx looks
    up every id it decodes there; a tokens.txt of another model failed mid-decode with its
    ``_Map_base::at``.

    Raises:
        FileNotFoundError: without it.
        ValueError: for a line of another form, or another number of pieces, naming the file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (asr export-onnx writes it beside the graphs)")
    pieces = read_tokens_file(path, specials=False)
    graph, blank = _VOCAB_SIZE[report["layout"]]
    vocab_size = int(report["metadata"][graph]["vocab_size"]) + blank
    if len(pieces) != vocab_size:
        raise ValueError(f"{path}: {len(pieces)} pieces, the graphs have {vocab_size} tokens "
                         f"({graph} vocab_size): not the tokens.txt of this export")
    return pieces


def _check_hotwords(path: Path, pieces: Sequence[str]) -> None:
    """Reads the hotword file ``path`` as ``asr decode`` reads it
    (:func:`asr.decoding.context_graph.load_hotwords`) and checks that the model's ``pieces``
    spell every character of its phrases.

    sherpa-onnx stops at a bad ``:SCORE`` with only ``stof``, and of a phrase with a character
    no piece has (a lower-case phrase for an upper-case model) it keeps the pieces it finds and
    drops the rest without a word, boosting another phrase than the one written.

    Raises:
        ValueError: naming the file, the phrase and what is wrong with it.
    """
    hotwords = load_hotwords(path)  # its HotwordError (a ValueError) names the file
    known = {ch for piece in pieces if not (piece.startswith("<") and piece.endswith(">"))
             for ch in piece}
    for hotword in hotwords:
        unknown = sorted({ch for ch in hotword.text if ch != " " and ch not in known})
        if unknown:
            raise ValueError(
                f"hotwords file {path}: hotword {hotword.text!r} has characters no piece of the "
                f"model has: {''.join(unknown)!r} (check the case; sherpa-onnx would drop them "
                "and boost what is left)")


_LAYOUTS = ("transducer", "streaming_transducer", "ctc", "tdt")
#: layout -> the graph whose metadata ``vocab_size`` counts the tokens, and the tokens it
#: leaves out (the NeMo layout's count has no blank).
_VOCAB_SIZE = {"transducer": ("decoder.onnx", 0), "streaming_transducer": ("decoder.onnx", 0),
               "ctc": ("model.onnx", 0), "tdt": ("encoder.onnx", 1)}


def _read_report(path: Path) -> dict:
    """The ``export.json`` of an export directory, with the fields :func:`load_recognizer`
    reads.

    Raises:
        FileNotFoundError: without it.
        ValueError: for one that is no JSON object or lacks a field, naming the file and field.
    """
    if not path.is_file():
        directory = path.parent
        if (directory / METADATA_FILE).is_file():  # the package the graphs are exported from
            raise FileNotFoundError(
                f"{directory} is a model package (asr export-package), not an asr export-onnx "
                f"directory: export its graphs with asr export-onnx --model {directory} "
                f"--output-dir DIR (--streaming for asr serve --engine sherpa-onnx), or decode "
                f"the package itself with asr transcribe / asr serve (engine pytorch)"
            )
        raise FileNotFoundError(f"{path}: missing: not an asr export-onnx directory")
    report = read_json_object(path)
    if report.get("layout") not in _LAYOUTS:
        raise ValueError(f"{path}: layout {report.get('layout')!r} is none of {list(_LAYOUTS)}")
    fields = [("features", "sample_rate"), ("features", "num_mel_bins"),
              ("metadata", _VOCAB_SIZE[report["layout"]][0], "vocab_size")]
    if report["layout"] == "streaming_transducer":
        fields.append(("metadata", "encoder.onnx", "chunk_size"))
    for names in fields:
        value: Any = report
        for name in names:
            if not isinstance(value, dict) or name not in value:
                raise ValueError(f"{path}: no field {'.'.join(names)}")
            value = value[name]
    return report


def _recorded_blank_penalty(report: dict, path: Path) -> float:
    """The ``search.blank_penalty`` that ``export.json`` (``path``, read as ``report``) records,
    0 where it records none (a CTC export, or one made before the exports recorded it).

    Raises:
        ValueError: for a ``search`` that is no object or a penalty that is no finite number,
            naming the file and field.
    """
    search = report.get("search", {})
    if not isinstance(search, dict):
        raise ValueError(f"{path}: field search is no object: {search!r}")
    value = search.get("blank_penalty", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{path}: field search.blank_penalty is no finite number: {value!r}")
    return float(value)


def check_part_audio(cuts: CutSet, part: str, sample_rate: int) -> None:
    """Checks what decoding the test set ``part`` in sherpa-onnx needs of its cuts' audio,
    before anything is decoded: that every audio file exists
    (:func:`asr.data.filtering.check_cut_files`; a stat per file) and that each cut has one
    channel (:func:`asr.data.filtering.check_cut_audio`: the audio of a cut of C channels loads
    as (C, N), and flattened sherpa-onnx would decode its channels one after the other; other
    rates are resampled, so only channels count).

    Raises:
        FileNotFoundError: naming how many cuts lack their audio file, the first, its files.
        ValueError: naming a cut of several channels.
    """
    check_cut_files(cuts, "recording", f"test set {part}")
    check_cut_audio(cuts.resample(sample_rate), sample_rate)


def decode_part_sherpa(
    recognizer: SherpaRecognizer, manifest_dir: str | Path, part: str, batch_size: int = 32,
    cuts: CutSet | None = None,
) -> list[Recognition]:
    """Recognitions of the test set ``<manifest_dir>/librispeech_cuts_<part>.jsonl.gz`` (audio of
    every cut, unfiltered), as :func:`asr.run.evaluate.decode_part` makes them.

    Args:
        cuts: the test set's cuts as :func:`asr.data.librispeech.check_test_parts` returns them
            (the manifest is not read again); by default loaded here
            (:func:`asr.data.librispeech.load_test_part`).

    Raises:
        FileNotFoundError: naming a cut whose audio file is missing, before anything is
            decoded (:func:`check_part_audio`).
        asr.data.dataset.DataError: naming a cut whose audio cannot be loaded, and its files.
        ValueError: for ``batch_size`` < 1, naming a cut of several audio channels
            (:func:`check_part_audio`), or one without a supervision
            (:func:`asr.data.librispeech.load_test_part`), before anything is decoded (``asr
            decode`` refuses both).
        asr.data.cut_ids.DuplicateIdError: naming a cut id the test set holds twice (before
            anything is decoded).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    manifest_dir = Path(manifest_dir)
    if cuts is None:
        cuts = load_test_part(manifest_dir, part)  # each id once: scored once
    check_part_audio(cuts, part, recognizer.sample_rate)
    cut_list = list(cuts)
    recognitions: list[Recognition] = []
    seconds = audio = 0.0
    for start in range(0, len(cut_list), batch_size):
        batch = cut_list[start: start + batch_size]
        waves = []
        for cut in batch:
            try:
                samples = cut.resample(recognizer.sample_rate).load_audio()
            except Exception as err:  # noqa: BLE001 - lhotse, soundfile, audioread... types
                raise DataError(unreadable_cut_error(cut, ["recording"]) or
                                f"cannot load cut {cut.id!r} ({cut_files(cut)}): "
                                f"{error_reason(err)}") from err
            waves.append(np.asarray(samples, dtype=np.float32).reshape(-1))
        began = time.perf_counter()
        results = recognizer.decode(waves, batch_size=batch_size)
        seconds += time.perf_counter() - began
        audio += sum(c.duration for c in batch)
        for cut, result in zip(batch, results):
            recognitions.append(Recognition(cut.id, cut_text(cut), result.text))
    logger.info("%s: %d utterances, %.1f s of audio decoded by sherpa-onnx in %.1f s (RTF %.3f)",
                part, len(recognitions), audio, seconds, seconds / max(audio, 1e-9))
    return recognitions
