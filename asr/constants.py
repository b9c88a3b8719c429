"""Constants that the command line's options (their checks and ``--help`` defaults) share with
the heavy modules they describe, and the one check of a value that both make
(:func:`hotword_score_problem`, and :func:`hotword_score`, the option type of every
``--hotwords-score``; :func:`hotwords_file`, whether a ``--hotwords`` value names a file, for
``asr transcribe`` and the server's torch-free client alike), the one ``--overwrite`` flag
(:func:`add_overwrite_argument`), the one rule for an option's hidden old name
(:class:`OldName`), and the parser class of their command lines
(:class:`IntermixedParser`), where a process stands in a ``torchrun`` job
(:func:`torchrun_place`) and which of its warnings each rank logs (:data:`PER_RANK`), kept
here so that naming one imports neither torch nor a model:
``asr average --help`` or ``asr train`` need not import :mod:`asr.package` or
:mod:`asr.runtime.streaming` to say a default or recognize a package. The modules that own each
idea import it from here (and re-export it), so that there is one value.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "DEFAULT_MAX_LEFT_SECONDS", "DEFAULT_OVERLAP_SECONDS", "DEFAULT_WINDOW_SECONDS", "LOG_FORMAT",
    "EXPORT_REPORT_FILE", "MAX_HOTWORD_SCORE", "METADATA_FILE", "OLD_NAMES", "PER_RANK",
    "IntermixedParser", "OldName", "add_overwrite_argument", "hotword_score",
    "hotword_score_problem", "hotwords_file", "torchrun_place",
]

#: The format of every log line of the ``asr`` command (``logging.basicConfig``) and of the
#: training log ``<exp-dir>/train.log`` (:class:`asr.train.trainer.Trainer`).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: ``extra`` of a warning that says something of its own rank (``logger.warning(...,
#: extra=PER_RANK)``), which every rank of a ``torchrun`` job logs; any other warning is the
#: same on every rank (a config's, the data filter's, the dev/train overlap) and only rank 0
#: logs it (:func:`asr.cli.main.console_logging`). Errors are logged by every rank.
PER_RANK = {"per_rank": True}


def torchrun_place(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` of this process as ``torchrun`` sets them in
    ``environ`` (default ``os.environ``: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); ``(0, 1,
    0)`` for a process started otherwise. The one reading of them: the process group's set-up
    (:func:`asr.train.distributed.setup_distributed`) and the console log
    (:func:`asr.cli.main.console_logging`) agree on which rank a process is.

    Raises:
        ValueError: naming the variable, when one is no integer or the rank is not below the
            world size.
    """
    environ = os.environ if environ is None else environ
    values = []
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = environ.get(name) or str(default)
        try:
            values.append(int(text))
        except ValueError:
            raise ValueError(f"the environment variable {name}={text!r} is no integer "
                             "(torchrun sets it)") from None
    rank, world_size, local_rank = values
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"the environment's RANK={rank} is not a rank of WORLD_SIZE="
                         f"{world_size}")
    return rank, world_size, local_rank

#: The file every model package holds (:mod:`asr.package`): its provenance, default searcher and
#: the sha256 of each file; a directory holding it is a package, not an experiment.
METADATA_FILE = "metadata.json"

#: The file every ``asr export-onnx`` directory holds (:mod:`asr.export.sherpa`): what was
#: exported and the front end it expects; a directory holding it is an export, not a package.
EXPORT_REPORT_FILE = "export.json"

#: Default length (seconds) of the windows the offline transcriber decodes long inputs in
#: (``Transcriber.transcribe(window_seconds=)``, ``asr transcribe --window-seconds``).
DEFAULT_WINDOW_SECONDS = 30.0

#: Default least overlap (seconds) of consecutive offline windows (``overlap_seconds``,
#: ``--overlap-seconds``), raised for a chunked encoder with limited left context to that context;
#: each window keeps the tokens up to the cut in its overlaps (:mod:`asr.runtime.offline`).
DEFAULT_OVERLAP_SECONDS = 2.0

#: Default bound (seconds) on the left context of unlimited left context (``left_chunks`` -1,
#: :class:`asr.runtime.streaming.StreamingRecognizer`, ``--max-left-seconds``): the window of
#: the offline transcriber, so a stream never sees more context than an offline window does, and
#: an hour-long stream keeps 30 s of cache, not 1 h.
DEFAULT_MAX_LEFT_SECONDS = DEFAULT_WINDOW_SECONDS

#: The largest magnitude of a per-token hotword boost (a phrase's ``:SCORE``, ``hotwords_score``,
#: ``--hotwords-score``; :mod:`asr.decoding.context_graph`): boosts add to log-probabilities,
#: where a few units already outweigh the acoustics; near float32's range (3.4e38) the searchers'
#: scores overflow to inf and NaN and a beam loses every hypothesis.
MAX_HOTWORD_SCORE = 100.0


def hotword_score_problem(score: float) -> str | None:
    """What is wrong with ``score`` as a per-token hotword boost, or None when it is one.

    The one rule of every boost (``--hotwords-score`` in :mod:`asr.cli.options`, a phrase's
    ``:SCORE`` and ``hotwords_score`` in :mod:`asr.decoding.context_graph`): at most
    :data:`MAX_HOTWORD_SCORE` in magnitude; inf and NaN are refused.
    """
    if abs(score) <= MAX_HOTWORD_SCORE:  # False for NaN
        return None
    return f"a per-token boost must be in [-{MAX_HOTWORD_SCORE:g}, {MAX_HOTWORD_SCORE:g}]"


def hotword_score(text: str) -> float:
    """An argparse type for ``--hotwords-score`` (``asr transcribe``, ``asr decode-onnx``, the
    server's client): a per-token boost, at most :data:`MAX_HOTWORD_SCORE` in magnitude
    (:func:`hotword_score_problem`); ``inf`` and ``nan``, which ``float`` takes, are refused
    here, naming the option, not later as a config value or by the server."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    problem = hotword_score_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
    return value


#: The namespace attribute where :class:`OldName` notes the old option names a command line
#: used: ``[(old, new), ...]``, each once.
OLD_NAMES = "old_option_names"


class OldName(argparse.Action):
    """The hidden old name of an option (``--out`` of ``--output-dir``, ``--force`` of
    ``--overwrite``): it sets the option's ``dest`` as the new name does (its value, or
    ``const`` for a flag: ``nargs=0``) and notes ``(old, new)`` in ``args.old_option_names``
    (:data:`OLD_NAMES`), which ``asr`` logs as a warning once logging is set up (a log line
    like any other, that ``--log-level`` governs; logged while parsing, it came before the log
    format and level were set). The one rule for an option's old name.

    The new name may be ``required=True``, as any required option (``--output-dir``): a
    missing one gets argparse's "the following arguments are required: --output-dir", and the
    old name given in its place meets the requirement for that parse (an
    :class:`IntermixedParser` restores it after; the old name of a required option in another
    parser, which would leave it unrequired for every later parse, is a TypeError). A mutually
    exclusive group of the two names said "one of the arguments --output-dir is required",
    naming a choice the user does not have. Both names in one command line (``--out X
    --output-dir Y``, ``--force --overwrite``) are a usage error of an
    :class:`IntermixedParser`, naming both (the last of them won without a word).

    Args:
        new: the option's name now, for the warning.
    """

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        renamed = parser._option_string_actions.get(self.new)
        if renamed is not None and renamed.required:  # met by its old name, this parse only
            if not isinstance(parser, IntermixedParser):  # nothing would restore it after
                raise TypeError(f"{self.option_strings[0]}, the old name of the required "
                                f"{self.new}, needs an IntermixedParser, which requires it "
                                f"again in the next parse; {parser.prog}'s parser is "
                                f"{type(parser).__name__}")
            renamed.required = False
        noted = list(getattr(namespace, OLD_NAMES, []))
        if (option_string, self.new) not in noted:
            setattr(namespace, OLD_NAMES, [*noted, (option_string, self.new)])


def add_overwrite_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite``, the one name of every subcommand's "replace what an earlier run made"
    flag (``args.overwrite``), as NeMo's and the Hugging Face scripts' ``overwrite``; ``--force``,
    the name ``asr bpe``, ``asr lm`` and ``asr export-onnx`` had, is kept as its old name
    (:class:`OldName`: hidden from the help, warned of as deprecated, in every subcommand that
    has the flag).

    Args:
        parser: the subcommand's parser.
        what: the help: what the flag replaces, e.g. "replace an earlier package in
            --output-dir".
    """
    parser.add_argument("--overwrite", action="store_true", help=what)
    parser.add_argument("--force", dest="overwrite", action=OldName, new="--overwrite", nargs=0,
                        const=True, default=False)


class IntermixedParser(argparse.ArgumentParser):
    """A parser that takes its positional arguments between options too, as
    :meth:`argparse.ArgumentParser.parse_intermixed_args` does: ``asr transcribe --model PKG
    a.wav --format json b.wav`` transcribes both files (a plain parser took ``a.wav`` alone and
    refused ``b.wav`` as an unrecognized argument); every ``asr`` subcommand's parser and the
    server's client (:mod:`asr.serve.client`) are one.

    Two command lines parse as with a plain parser: those of a parser with steps of its own
    (``asr prepare manifests``), which argparse cannot intermix, and those holding ``--``, after
    which every word is a positional one (``-- -a.wav``): Python 3.11's intermixed parsing drops
    the ``--`` and refuses ``-a.wav`` as an unrecognized argument.

    An option of several values whose action has a ``takes_word`` test (``--set``:
    :func:`asr.cli.options.add_search_arguments`) takes the words after it only while they pass
    it; the first that does not is a positional one, in its place among the others: ``a.wav
    --set search.beam_size=8 b.wav --format json c.wav`` gives the files ``a.wav b.wav c.wav``
    (argparse's ``nargs="+"`` took ``b.wav`` into ``--set``, out of its order among the files).
    A parser without positional arguments (``asr serve``, ``asr export-package``) has no word
    to give back: its option takes every word, as argparse's, so a malformed one
    (``search.lm_weight 0.3``) gets the option's own error, which says the form it needs.
    """

    _intermixing = False

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - argparse's
        super().__init__(*args, **kwargs)
        self._given: set[argparse.Action] = set()  # given a value in the parse under way

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's
        if self._intermixing:
            return self._parse_known_args_of(args, namespace)
        # an option's old name (OldName) meets a required option's requirement for one parse
        required = [(action, action.required) for action in self._actions]
        self._given = set()
        try:
            parsed = self._parse_known_args_of(args, namespace)
        finally:
            for action, was in required:
                action.required = was
        self._refuse_old_and_new_names()
        return parsed

    def _get_values(self, action, arg_strings):  # noqa: ANN001, ANN202 - argparse's
        # argparse calls it once for each option or positional argument of the command line
        self._given.add(action)
        return super()._get_values(action, arg_strings)

    def _refuse_old_and_new_names(self) -> None:
        """Exits (2, argparse's usage error) when an option and its hidden old name
        (:class:`OldName`) were both given: ``--out X --output-dir Y`` took the last of them
        without a word."""
        for old in self._actions:
            if not isinstance(old, OldName) or old not in self._given:
                continue
            new = self._option_string_actions.get(old.new)
            if new is not None and new in self._given:
                self.error(f"argument {old.new}: given with {'/'.join(old.option_strings)}, "
                           f"its old name: give {old.new} alone")

    def _parse_known_args_of(self, args, namespace):  # noqa: ANN001, ANN202 - argparse's
        words = sys.argv[1:] if args is None else list(args)
        if not self._intermixing:
            words = self._bound_tested_options(words)
        steps = any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in self._actions)
        # self._intermixing: the two passes of Python 3.11's parse_known_intermixed_args, which
        # call this method (later versions' call argparse's inner parsing, never this one)
        if self._intermixing or steps or "--" in words:
            return super().parse_known_args(words, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(words, namespace)
        finally:
            self._intermixing = False

    def _bound_tested_options(self, words: list[str]) -> list[str]:
        """``words`` with each ``OPT W1 W2 ...`` of an option with a ``takes_word`` test written
        ``OPT=W1 OPT=W2 ...`` for the words after it that pass the test, so that argparse takes
        those alone (an ``OPT=W`` takes one value); words after ``--`` are left as they are, and
        so is an option whose first word fails (argparse then takes it as it would), and all of
        them in a parser without positional arguments, which a word could be."""
        if all(action.option_strings for action in self._actions):
            return words
        out: list[str] = []
        index = 0
        while index < len(words):
            word = words[index]
            index += 1
            if word == "--":
                return out + [word] + words[index:]
            takes_word = getattr(self._option_string_actions.get(word), "takes_word", None)
            end = index
            while takes_word is not None and end < len(words) and takes_word(words[end]):
                end += 1
            if end == index:
                out.append(word)
            else:
                out += [f"{word}={value}" for value in words[index:end]]
                index = end
        return out


def hotwords_file(spec: str | Path) -> Path | None:
    """The file a hotwords value names (``--hotwords FILE|PHRASES`` of ``asr transcribe`` and of
    the server's client, the runtime's ``hotwords=``), or None when ``spec`` is inline phrases
    (``"ALPHA BETA;GAMMA :2.5"``).

    Raises:
        ValueError: for a ``.txt`` name (without ``;`` or a newline) that is no file: read as
            phrases, its error would name a word of the path instead.
    """
    path = Path(spec)
    try:
        if path.is_file():
            return path
    except OSError:  # e.g. a name too long to be a path: inline phrases
        pass
    text = str(spec)
    if text.lower().endswith(".txt") and ";" not in text and "\n" not in text:
        raise ValueError(f"hotwords file {text} does not exist (inline phrases are separated "
                         "by ';')")
    return None
