"""Model packages: everything needed to run a trained model, loadable without unpickling.

A package is a directory::

    PKG/config.yaml         the resolved ExperimentConfig (tokenizer_dir: tokenizer)
    PKG/tokenizer/          tokenizer files (tokens.txt, bpe.model for sentencepiece)
    PKG/model.safetensors   weights (safetensors: tensors only, no code)
    PKG/lm/NAME.arpa        the n-gram LM of ``search.lm_path``, when the search fuses one (a
                            copy of the file as it is: ``NAME.arpa.gz`` stays compressed)
    PKG/hotwords/NAME       the phrase list of ``search.hotwords_file``, when the search biases
    PKG/metadata.json       provenance, default searcher, sizes, WER if known, sha256 of each file

:func:`export_package` writes one from an experiment directory (the weights an
:class:`asr.checkpoints.selection.WeightSelection` chooses: one checkpoint or an average), with the
search the package should decode with by default: a searcher (a name, or the role ``greedy`` /
``beam``) and the ``search:`` options (``search.beam_size=8 search.lm_path=...``). The LM file
and the hotword list are copied into the package and ``config.yaml`` names them relative to the
package (``search.lm_path: lm/NAME.arpa``, ``search.hotwords_file: hotwords/NAME``), so the
package can be moved or copied anywhere. :func:`load_package` reads it back with YAML, JSON and
safetensors only, checking every file's sha256 so that a truncated or corrupt file is reported
by name (:class:`PackageError`); every file it reads must be listed (an unlisted file in
``tokenizer/`` would otherwise choose the tokenizer), and it resolves the packaged search files
against the package directory. A package that a newer asr wrote, with what this one cannot
read (a ``format_version``, a metadata or config key it does not know, weights of a model it
builds otherwise, and, when :class:`asr.runtime.bundle.Runtime` is built, a default searcher it
does not know), is refused saying so: upgrade asr. Training checkpoints are read with
``torch.load(weights_only=True)``.

Writing is atomic: the package is built in a hidden directory beside ``out_dir`` and renamed into
place; ``overwrite`` replaces only an earlier package (never the experiment it is exported from
or a directory that holds it, nor any other directory), and the old one stays in place until
the new one is complete (:func:`asr.fileio.publish_directory`, which ``asr export-onnx`` and
``asr shar`` share).

Example:
    >>> export_package("exp/transducer", "pkg/transducer", WeightSelection(last=2),
    ...                searcher="beam", search=["search.beam_size=8", "search.lm_path=lm.arpa",
    ...                                         "search.lm_weight=0.5"])
    >>> package = load_package("pkg/conformer_ctc")
    >>> model = package.build_model()
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asr.checkpoints.io import CheckpointError, load_weights, save_weights
from asr.checkpoints.selection import (
    PlannedWeights,
    SelectedWeights,
    WeightSelection,
    read_weights,
    use_planned_weights,
)
from asr.config import ConfigError, load_config, save_config
from asr.constants import EXPORT_REPORT_FILE, METADATA_FILE
from asr.decoding.config import override_search
from asr.decoding.lm import check_lm_file
from asr.decoding.registry import build_searcher, searcher_for, select_searcher, select_searchers
from asr.encoders import is_streaming
from asr.experiment import (
    CONFIG_FILE,
    ExperimentConfig,
    build_model,
    check_checkpoint_vocabulary,
    load_experiment_config,
)
from asr.fileio import (
    OutputBusyError,
    check_writable_dir,
    output_lock,
    publish_directory,
    read_json_object,
    staging_directory,
)
from asr.fingerprint import sha256_of_file
from asr.model import ASRModel
from asr.tokenizers import Tokenizer, load_tokenizer
from asr.version import __version__

__all__ = [
    "ModelPackage",
    "PackageError",
    "PackageMetadata",
    "check_output_dir",
    "export_package",
    "locked_output_dir",
    "load_package",
    "newer_writer",
]

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
LM_DIR = "lm"
HOTWORDS_DIR = "hotwords"
FORMAT_VERSION = 1
#: ``search:`` fields naming a file that the package carries -> its directory in the package.
SEARCH_FILES = {"lm_path": LM_DIR, "hotwords_file": HOTWORDS_DIR}


class PackageError(ValueError):
    """A package or experiment file that is missing, truncated, corrupt or inconsistent."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _release(version: object) -> tuple[int, ...] | None:
    """The release numbers of a version string (``"0.2.1rc1"`` -> ``(0, 2, 1)``), or None."""
    match = re.match(r"\d+(?:\.\d+)*", version) if isinstance(version, str) else None
    return tuple(int(part) for part in match.group().split(".")) if match else None


def newer_writer(asr_version: object) -> str:
    """What to add to the error of a package that this asr cannot read (a metadata or config
    key it does not know, weights of a model it builds otherwise) when ``asr_version``, the
    package's writer, is a newer release than this one: that, and to upgrade; else ``""``."""
    theirs, ours = _release(asr_version), _release(__version__)
    if theirs is None or ours is None or theirs <= ours:
        return ""
    return (f"; the package was written by asr {asr_version}, newer than this asr "
            f"{__version__}: upgrade asr")


#: JSON type of each annotation of :class:`PackageMetadata`: (what it is, a check of a value).
_METADATA_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "tuple[str, ...]": ("a list of strings",
                        lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "dict[str, float]": ("an object of numbers", lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and _number(x) for k, x in v.items())),
    "dict[str, str]": ("an object of strings", lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items())),
}


@dataclass(frozen=True)
class PackageMetadata:
    """Contents of ``metadata.json``.

    Attributes:
        format_version: package layout version.
        asr_version: version of this toolkit that wrote the package.
        created: UTC time of export, ISO 8601.
        checkpoints: file names of the averaged checkpoints.
        training_data: training manifests of the experiment.
        wer: test set -> WER in percent with the package's default search (its searcher and
            ``search:`` options), when known; without one given at export, the last validation
            WER of training (greedy) as ``dev``.
        searcher: default searcher name (``search:`` in ``config.yaml`` holds its options).
        streaming: whether the encoder streams (causal and chunked; with ``left_chunks`` -1
            its attention cache grows with the stream).
        chunk_size: encoder frames per streaming chunk (0: full context).
        left_chunks: chunks of left context (-1: unlimited).
        num_parameters: model parameters.
        vocab_size: V including blank.
        sample_rate: feature sampling rate in Hz.
        sha256: package-relative file name -> sha256 hex digest.
    """

    format_version: int = FORMAT_VERSION
    asr_version: str = ""
    created: str = ""
    checkpoints: tuple[str, ...] = ()
    training_data: tuple[str, ...] = ()
    wer: dict[str, float] = field(default_factory=dict)
    searcher: str = "ctc_greedy"
    streaming: bool = False
    chunk_size: int = 0
    left_chunks: int = -1
    num_parameters: int = 0
    vocab_size: int = 0
    sample_rate: int = 16000
    sha256: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> PackageMetadata:
        """Builds the metadata from parsed JSON, rejecting unknown keys and values of the wrong
        JSON type (naming ``source`` and the field)."""
        version = data.get("format_version", FORMAT_VERSION)
        integer = isinstance(version, int) and not isinstance(version, bool)
        if not integer or version != FORMAT_VERSION:
            newer = integer and version > FORMAT_VERSION
            raise PackageError(
                f"{source}: format_version {version!r} is not supported (expected "
                f"{FORMAT_VERSION})" + ("; the package was written by a newer asr: upgrade asr"
                                        if newer else ""))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        upgrade = newer_writer(data.get("asr_version"))
        if unknown:
            raise PackageError(f"{source}: unknown metadata keys {unknown}{upgrade}")
        sha256 = data.get("sha256", {})
        if not isinstance(sha256, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in sha256.items()):
            raise PackageError(f"{source}: sha256 must map file names to hex digests")
        for f in dataclasses.fields(cls):
            kind, fits = _METADATA_TYPES[str(f.type)]
            if f.name in data and not fits(data[f.name]):
                raise PackageError(f"{source}: {f.name} must be {kind}, got {data[f.name]!r}"
                                   f"{upgrade}")
        values = dict(data)
        for key in ("checkpoints", "training_data"):
            if key in values:
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except TypeError as err:
            raise PackageError(f"{source}: invalid metadata: {err}{upgrade}") from err


@dataclass(frozen=True)
class ModelPackage:
    """A loaded package (weights on CPU).

    Attributes:
        directory: where it was read from.
        config: the experiment config (``tokenizer_dir`` points into the package).
        tokenizer: the tokenizer.
        state_dict: model weights.
        metadata: ``metadata.json``.
    """

    directory: Path
    config: ExperimentConfig
    tokenizer: Tokenizer
    state_dict: dict[str, torch.Tensor]
    metadata: PackageMetadata

    def build_model(self, device: torch.device | str = "cpu") -> ASRModel:
        """The model in eval mode with the package weights, on ``device``."""
        model = build_model(self.config, self.tokenizer.vocab_size)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as err:
            raise PackageError(
                f"{self.directory / WEIGHTS_FILE}: weights do not fit {CONFIG_FILE}: {err}"
                f"{newer_writer(self.metadata.asr_version)}"
            ) from err
        return model.to(device).eval()


# --------------------------------------------------------------------------------- reading


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise PackageError(f"{path}: missing package file")
    if path.stat().st_size == 0:
        raise PackageError(f"{path}: empty package file (truncated?)")


def _read_metadata(directory: Path) -> PackageMetadata:
    path = directory / METADATA_FILE
    _require_file(path)
    try:
        data = read_json_object(path)
    except ValueError as err:
        raise PackageError(str(err)) from None
    return PackageMetadata.from_json(data, str(path))


def _files_read(directory: Path, cfg: ExperimentConfig) -> list[str]:
    """Package-relative names of the files :func:`load_package` reads: the config, the weights,
    every file of the tokenizer directory (whose files choose its kind) and the packaged search
    files."""
    names = [CONFIG_FILE, WEIGHTS_FILE]
    tokenizer = directory / TOKENIZER_DIR
    if tokenizer.is_dir():
        names += sorted(p.relative_to(directory).as_posix() for p in tokenizer.rglob("*")
                        if not p.is_dir())
    for name, folder in SEARCH_FILES.items():
        path = getattr(cfg.search, name)
        if path is not None and Path(path).parts[:1] == (folder,):
            names.append(Path(path).as_posix())
    return names


def _check_listed(directory: Path, metadata: PackageMetadata, cfg: ExperimentConfig) -> None:
    """Every file the package is read from has its sha256 in ``metadata.json``."""
    unlisted = [name for name in _files_read(directory, cfg) if name not in metadata.sha256]
    if unlisted:
        raise PackageError(
            f"{directory / METADATA_FILE}: no sha256 for {unlisted}: files that are not part "
            f"of the package as exported (remove them, or re-export the package)")


def _verify_files(directory: Path, metadata: PackageMetadata) -> None:
    for rel, expected in sorted(metadata.sha256.items()):
        path = (directory / rel).resolve()
        if directory.resolve() not in path.parents:
            raise PackageError(f"{directory / METADATA_FILE}: file name {rel!r} leaves the package")
        _require_file(path)
        if sha256_of_file(path) != expected:
            raise PackageError(
                f"{directory / rel}: sha256 mismatch: the file is truncated or corrupt "
                f"(re-export or re-download the package)"
            )


def _export_hint(exp_dir: Path, weights: str) -> str:
    return (f"asr export-package --exp-dir {exp_dir} {weights}--output-dir {exp_dir / 'package'}")


def _check_is_package(directory: Path) -> None:
    """Says what ``directory`` is when it is not a package: a checkpoint or weights file, an
    ``asr export-onnx`` directory (and what takes it), an experiment directory (and where its
    package is), or nothing at all."""
    if not directory.exists():
        raise PackageError(f"{directory}: no such model package directory")
    if directory.is_file():
        if directory.suffix in (".pt", ".safetensors"):
            kind = "a training checkpoint" if directory.suffix == ".pt" else "a weights file"
            raise PackageError(
                f"{directory} is {kind}, not a model package; make a package from it with: "
                + _export_hint(directory.parent, f"--checkpoint {directory} ")
            )
        raise PackageError(f"{directory} is a file, not a model package directory")
    if (directory / METADATA_FILE).exists():
        return
    if (directory / EXPORT_REPORT_FILE).is_file():
        raise PackageError(
            f"{directory} is an asr export-onnx directory (ONNX graphs for sherpa-onnx), not a "
            f"model package: serve it with asr serve --engine sherpa-onnx --model {directory}, "
            f"decode test sets with asr decode-onnx --onnx-dir {directory}; asr transcribe and "
            f"the Python API need the package it was exported from"
        )
    experiment = (directory / CONFIG_FILE).is_file() and (
        any(directory.glob("checkpoint-*.pt")) or any(directory.glob("epoch-*.pt"))
    )
    if experiment:
        package = directory / "package"
        if (package / METADATA_FILE).is_file():
            raise PackageError(
                f"{directory} is an experiment directory (asr train), not a model package; "
                f"its package is {package}"
            )
        raise PackageError(
            f"{directory} is an experiment directory (asr train), not a model package; make "
            f"its package with: " + _export_hint(directory, "")
        )


def _read_config(path: Path, newer: str = "") -> ExperimentConfig:
    """The package's config; ``newer``: :func:`newer_writer`'s addition to an error."""
    try:
        return load_config(ExperimentConfig, path)
    except (ConfigError, OSError, ValueError) as err:
        message = str(err)
        if str(path) not in message:  # ConfigError names the file already
            message = f"{path}: {message}"
        raise PackageError(f"{message}{newer}") from err


def load_package(directory: str | Path, verify: bool = True) -> ModelPackage:
    """Reads a package written by :func:`export_package`.

    Args:
        directory: the package directory.
        verify: check each file's sha256 against ``metadata.json``.

    Raises:
        PackageError: naming the file that is missing, truncated, corrupt or inconsistent.
    """
    directory = Path(directory)
    _check_is_package(directory)
    metadata = _read_metadata(directory)
    config_path = directory / CONFIG_FILE
    _require_file(config_path)
    if verify:
        _verify_files(directory, metadata)
    newer = newer_writer(metadata.asr_version)
    cfg = _read_config(config_path, newer)
    if verify:
        _check_listed(directory, metadata, cfg)
    cfg = dataclasses.replace(cfg, tokenizer_dir=directory / TOKENIZER_DIR)
    packaged = {}
    for name in SEARCH_FILES:
        path = getattr(cfg.search, name)
        if path is not None and not path.is_absolute() and path.as_posix() in metadata.sha256:
            # the package's own file: named relative to the package, wherever it now is
            packaged[name] = directory / path
    if packaged:
        cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, **packaged))
    try:
        tokenizer = load_tokenizer(directory / TOKENIZER_DIR)
    except (OSError, ValueError) as err:
        raise PackageError(f"{directory / TOKENIZER_DIR}: {err}{newer}") from err
    weights_path = directory / WEIGHTS_FILE
    _require_file(weights_path)
    try:
        state_dict = load_weights(weights_path)
    except CheckpointError as err:
        raise PackageError(str(err)) from err
    if metadata.vocab_size and metadata.vocab_size != tokenizer.vocab_size:
        raise PackageError(
            f"{directory / METADATA_FILE}: vocab_size {metadata.vocab_size} differs from the "
            f"tokenizer's {tokenizer.vocab_size}"
        )
    return ModelPackage(directory, cfg, tokenizer, state_dict, metadata)


# --------------------------------------------------------------------------------- writing


def _last_wer(checkpoint: Mapping[str, Any]) -> dict[str, float]:
    history = (checkpoint.get("progress") or {}).get("history") or []
    for record in reversed(history):
        if isinstance(record, dict) and record.get("valid_wer") is not None:
            return {"dev": float(record["valid_wer"])}
    return {}


def _copy_search_file(path: Path, folder: str, tmp: Path) -> Path:
    """Copies a file of the search options (the LM, the hotword list) into ``tmp/folder/``;
    returns its package-relative path."""
    rel = Path(folder) / path.name
    (tmp / folder).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, tmp / rel)
    return rel


def _is_within(path: Path, directory: Path) -> bool:
    path, directory = path.resolve(), directory.resolve()
    return path == directory or directory in path.parents


def check_output_dir(out_dir: Path, replace: bool, marker: str, inputs: Iterable[Path],
                     option: str) -> None:
    """Raises ValueError unless :func:`publish_directory` may write ``out_dir``: it does not
    exist (and no file is in the way of its directory), or ``replace`` is set and it is an earlier
    output (it holds ``marker``) or an empty directory, and it is none of ``inputs`` nor a directory
    holding one of them. The message advises ``option`` only for an output it would replace.

    Args:
        out_dir: the directory to write.
        replace: the caller's overwrite option is set.
        marker: the file that every such output holds (``metadata.json``, ``export.json``).
        inputs: what the output is made from (an experiment, a package, its files).
        option: the name of the overwrite option, for the messages.
    """
    if not out_dir.exists() and not out_dir.is_symlink():
        check_writable_dir(out_dir, "--output-dir")  # no file above it
        return
    # what the option would not replace first: advising it there only led to a second refusal
    for source in inputs:
        if _is_within(Path(source), out_dir):
            raise ValueError(f"{out_dir}: the output would replace {source}, which it is "
                             f"made from; choose another output directory")
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise ValueError(f"{out_dir}: exists and is not a directory; {option} replaces only "
                         "an earlier output directory")
    try:  # a directory this user may not list (another user's) is no output it may replace
        foreign = not (out_dir / marker).is_file() and any(out_dir.iterdir())
    except OSError as err:
        raise ValueError(f"{out_dir}: exists and cannot be read ({err.strerror or err}); "
                         "choose another output directory") from None
    if foreign:
        raise ValueError(f"{out_dir}: exists and holds no {marker}; {option} replaces only an "
                         "earlier output (or an empty directory), never other files")
    if not replace:
        raise ValueError(f"{out_dir}: already exists (pass {option} to replace it)")


@contextmanager
def locked_output_dir(out_dir: Path, replace: bool, marker: str, inputs: Iterable[Path],
                      option: str, error: Callable[[str], Exception]) -> Iterator[None]:
    """Holds the lock of the output directory ``out_dir`` (:func:`asr.fileio.output_lock`)
    while the block makes it: checks it (:func:`check_output_dir`) before the lock, so that an
    output in the way is refused at once, and again under it, since another run may have
    published it meanwhile. ``asr export-package`` and ``asr export-onnx`` make their outputs
    in it.

    Args:
        out_dir, replace, marker, inputs, option: as :func:`check_output_dir` takes them.
        error: the caller's error type, made from a message (:class:`PackageError`...).

    Raises:
        error: for an output the checks refuse, one that another run is writing, or one that
            cannot be written (no permission, a read-only file system), naming it; an exception
            of the block passes as it is.
    """
    inputs = list(inputs)
    with ExitStack() as lock:
        try:
            check_output_dir(out_dir, replace, marker, inputs, option)
            lock.enter_context(output_lock(out_dir))
            check_output_dir(out_dir, replace, marker, inputs, option)
        except (ValueError, OutputBusyError) as err:  # OutputUnwritableError is a ValueError
            raise error(str(err)) from err
        yield


def export_package(
    exp_dir: str | Path,
    out_dir: str | Path,
    selection: WeightSelection | None = None,
    tokenizer_dir: str | Path | None = None,
    wer: Mapping[str, float] | None = None,
    overwrite: bool = False,
    searcher: str | None = None,
    search: Mapping[str, Any] | Iterable[str] | None = None,
) -> PackageMetadata:
    """Writes a model package from an experiment, holding the lock of ``out_dir``
    (:func:`locked_output_dir`) from its check under the lock to its last write. The weights
    are planned before the lock, from the directory listing (as ``asr average`` plans them): a
    missing checkpoint is a mistake in the command that no wait mends, so it is reported before
    an output another run is writing, and makes nothing; they are read under the lock, and
    planned again when a running training pruned a chosen checkpoint meanwhile
    (:func:`asr.checkpoints.selection.use_planned_weights`).

    Args:
        exp_dir: experiment directory written by ``asr train``.
        out_dir: package directory to create (must not exist unless ``overwrite``).
        selection: which weights (:mod:`asr.checkpoints.selection`; default: the newest
            ``checkpoint-N.pt``).
        tokenizer_dir: tokenizer to package; default the experiment's ``tokenizer_dir``.
        wer: known WERs (percent) of the package's default search, by test set; default the
            last validation WER of the checkpoint (as ``dev``).
        overwrite: replace an earlier package in ``out_dir`` (or an empty directory; never
            another directory, nor the experiment or a directory that holds it).
        searcher: the package's default searcher: a name, or the role ``greedy`` / ``beam``
            (:func:`asr.decoding.registry.searcher_for`); default the greedy searcher of the
            model's first trained head (``heads.loss_weights`` > 0; the dev WER's), else its
            beam searcher: a head of loss weight 0 is built but not trained. A searcher given
            that reads such a head is the user's choice, warned of
            (:func:`asr.decoding.registry.select_searchers`).
        search: changes to the experiment's ``search:`` options that the package keeps as its
            defaults (``{"beam_size": 8}`` or ``["search.beam_size=8", ...]``); the LM of
            ``lm_path`` and the phrase list of ``hotwords_file`` are copied into the package.

    Returns:
        The metadata written.

    Raises:
        PackageError: for missing / corrupt checkpoints, configs, tokenizers or LMs, for a
            searcher or search option the model cannot use, and while another run writes
            ``out_dir``.
    """
    exp_dir, out_dir = Path(exp_dir), Path(out_dir)

    def export(plan: PlannedWeights) -> PackageMetadata:
        with locked_output_dir(out_dir, overwrite, METADATA_FILE, [exp_dir], "--overwrite",
                               PackageError):
            try:  # a CheckpointError passes: a file pruned meanwhile is chosen again
                weights = read_weights(plan)
            except (FileNotFoundError, ValueError) as err:
                raise PackageError(f"{exp_dir}: {err}") from err
            return _export_package(exp_dir, out_dir, weights, tokenizer_dir, wer, overwrite,
                                   searcher, search)

    try:  # each plan lists the files, reading none, before the lock
        return use_planned_weights(exp_dir, selection or WeightSelection(), export)
    except (FileNotFoundError, CheckpointError) as err:
        raise PackageError(f"{exp_dir}: {err}") from err


def _export_package(
    exp_dir: Path,
    out_dir: Path,
    weights: SelectedWeights,
    tokenizer_dir: str | Path | None,
    wer: Mapping[str, float] | None,
    overwrite: bool,
    searcher: str | None,
    search: Mapping[str, Any] | Iterable[str] | None,
) -> PackageMetadata:
    """The body of :func:`export_package`, run under the lock of ``out_dir`` on the weights
    read there."""
    logger.info("weights %s from %s", weights.tag, ", ".join(p.name for p in weights.sources))
    try:
        cfg = load_experiment_config(exp_dir, checkpoint=weights.checkpoint)
    except (ConfigError, FileNotFoundError) as err:
        raise PackageError(f"{exp_dir}: invalid experiment config: {err}") from err
    try:
        cfg = dataclasses.replace(cfg, search=override_search(cfg.search, search))
    except ConfigError as err:
        raise PackageError(str(err)) from err
    try:
        check_lm_file(cfg.search.lm_path)
    except ValueError as err:
        raise PackageError(str(err)) from err
    if cfg.search.hotwords_file is not None and not Path(cfg.search.hotwords_file).is_file():
        raise PackageError(f"search.hotwords_file {cfg.search.hotwords_file}: no such file")
    if tokenizer_dir is not None:
        cfg = dataclasses.replace(cfg, tokenizer_dir=Path(tokenizer_dir))
    sources = [*weights.sources, cfg.tokenizer_dir]
    sources += [Path(p) for p in (getattr(cfg.search, n) for n in SEARCH_FILES) if p is not None]
    try:  # the output is checked against what it is made from, known only now
        check_output_dir(out_dir, overwrite, METADATA_FILE, sources, "--overwrite")
    except ValueError as err:
        raise PackageError(str(err)) from err
    try:
        tokenizer = load_tokenizer(cfg.tokenizer_dir)
    except (OSError, ValueError) as err:
        raise PackageError(
            f"tokenizer_dir {cfg.tokenizer_dir}: {err} (pass --tokenizer-dir)"
        ) from err
    try:
        check_checkpoint_vocabulary(weights.checkpoint, tokenizer, cfg.tokenizer_dir,
                                    weights.sources[-1])
    except ValueError as err:
        raise PackageError(f"{err} (pass --tokenizer-dir)") from err
    model = build_model(cfg, tokenizer.vocab_size)
    reference = model.state_dict()
    try:
        model.load_state_dict(
            {k: v.to(reference[k].dtype) if k in reference else v
             for k, v in weights.state_dict.items()},
            strict=True,
        )
    except RuntimeError as err:
        raise PackageError(
            f"{weights.sources[-1]}: weights do not fit the experiment config: {err}"
        ) from err
    model.eval()
    if searcher is None:  # of a trained head: the package's default must decode
        searcher = (searcher_for("greedy", model, trained_only=True)
                    or searcher_for("beam", model, trained_only=True))
        assert searcher is not None, "a head trains, and every head has a greedy or beam searcher"
    else:
        try:
            searcher = select_searcher(searcher, model)
        except ValueError as err:
            raise PackageError(f"--searcher {searcher}: {err}") from err
    # its head (or first pass) may be one that heads.loss_weights leaves at 0, built and never
    # trained: warned of, as asr decode and asr train --check-only do
    select_searchers([searcher], cfg.heads, search=cfg.search)
    if any(getattr(cfg.search, name) is not None for name in (*SEARCH_FILES, "hotwords")):
        # the LM must load and fit the model's vocabulary, the tokenizer must spell the
        # hotwords, before they are packaged
        try:
            build_searcher(searcher, model, cfg.search, tokenizer=tokenizer)
        except (OSError, ValueError) as err:
            raise PackageError(f"searcher {searcher} with the search options: {err}") from err

    with staging_directory(out_dir) as tmp:
        save_weights(model.state_dict(), tmp / WEIGHTS_FILE, {"format": "pt"})
        tokenizer.save(tmp / TOKENIZER_DIR)
        files = [CONFIG_FILE, WEIGHTS_FILE] + sorted(
            f"{TOKENIZER_DIR}/{p.name}" for p in (tmp / TOKENIZER_DIR).iterdir() if p.is_file()
        )
        search_cfg = cfg.search
        for name, folder in SEARCH_FILES.items():
            source = getattr(search_cfg, name)
            if source is not None:
                rel = _copy_search_file(Path(source), folder, tmp)
                files.append(rel.as_posix())
                search_cfg = dataclasses.replace(search_cfg, **{name: rel})
                logger.info("packaged search.%s %s as %s", name, source, rel)
        save_config(dataclasses.replace(cfg, tokenizer_dir=Path(TOKENIZER_DIR), search=search_cfg),
                    tmp / CONFIG_FILE)
        metadata = PackageMetadata(
            asr_version=__version__,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            checkpoints=tuple(p.name for p in weights.sources),
            training_data=tuple(str(p) for p in cfg.data.train_cuts),
            wer=dict(wer) if wer is not None else _last_wer(weights.checkpoint),
            searcher=searcher,
            streaming=is_streaming(cfg.encoder),
            chunk_size=cfg.encoder.chunk_size,
            left_chunks=cfg.encoder.left_chunks,
            num_parameters=sum(p.numel() for p in model.parameters()),
            vocab_size=tokenizer.vocab_size,
            sample_rate=cfg.data.fbank.sample_rate,
            sha256={name: sha256_of_file(tmp / name) for name in files},
        )
        text = json.dumps(dataclasses.asdict(metadata), indent=2, sort_keys=True)
        (tmp / METADATA_FILE).write_text(text + "\n", encoding="utf-8")
        publish_directory(tmp, out_dir)
    logger.info("wrote model package %s (%d parameters, searcher %s)", out_dir,
                metadata.num_parameters, metadata.searcher)
    return metadata
