"""``asr transcribe FILES... --model PKG``: transcribe audio files (or ``-`` for stdin).

Every format soundfile reads (wav, flac, ogg/opus, mp3) and, through ``ffmpeg`` when it is
installed, everything ffmpeg decodes (m4a/aac, webm, ...), at any rate and channel count.

By default the package's own search decodes (the searcher and options, LM included, that the
recipe exported it with); ``--searcher`` and ``--set search.FIELD=VALUE`` change it, as in
``asr decode``. ``--streaming`` decodes chunk by chunk, a new segment searched afresh after each
endpoint (sherpa-onnx's rules: a pause, and 20 s at least); with ``--no-endpoint`` an input is
one segment, which every streaming searcher decodes as offline under the same chunking.
Offline, ``--chunk-size`` / ``--left-chunks`` set the encoder's chunk mask (WeNet's
``decoding_chunk_size`` / ``num_decoding_left_chunks``; default the package's), so that
``--streaming --no-endpoint`` at a chunk size can be checked against the offline decode at it;
long inputs' windows then lie on that chunking's grid (:meth:`asr.runtime.offline.Transcriber.
with_chunking`). ``--max-left-seconds`` bounds a stream's cache and is refused offline.

Output goes to stdout (or one file per input with ``--output-dir``: ``<stem>.<format>``, ``txt``
for text, each control character, path separator or character Windows forbids in a file name
(``<>:"|?*``) of the stem written as ``_``, a stem that Windows reserves for a device (``CON``,
``PRN``, ``AUX``, ``NUL``, ``COM0``-``COM9``, ``LPT0``-``LPT9``, also with ``¹²³`` for the
digit, in any letter case and with any extension, as in ``con.backup``) written with a leading
``_``, a stem too long for a file name
cut short; a stem that an earlier input has, such as ``b/a.wav`` after
``a/a.wav``, or has up to letter case, such as ``A.wav`` after ``a.wav`` (one file on
case-insensitive file systems), or that a directory there has, gets ``<stem>-2.<format>``,
``-3``, ...; an input whose file is not its plain ``<stem>.<format>`` is logged with its file):

* ``text``: one line per input: its transcript, or ``SOURCE<TAB>TEXT`` with several inputs on
  stdout (a control character of SOURCE, such as a tab or newline, written as an escape: ``\\t``,
  ``\\n``; a file of ``--output-dir`` holds its transcript alone);
* ``json``: JSON Lines: one JSON object per input and line (source, text, tokens, token times,
  words, segments), in input order;
* ``srt`` / ``vtt``: subtitles; cues break at segments, pauses >= ``PAUSE`` s, and after
  ``MAX_CUE_SECONDS`` s or ``MAX_CUE_CHARS`` characters. With several inputs, srt / vtt need
  ``--output-dir``. They need token times: a searcher that gives none (``aed_beam``) is refused
  (exit 2) before any input is decoded.

Inputs are read and decoded in groups (about half an hour of audio each:
:meth:`asr.runtime.offline.Transcriber.transcribe_iter`), and each output is written as soon as
its group is decoded, in input order: many or long inputs do not all sit in memory, and a run
stopped on the way keeps the outputs it has written.

A missing, empty, corrupt, truncated (its header declares more samples than it holds) or
non-audio input, or one whose decoding fails, is reported on stderr (naming it and why) and
the exit status is 1, while the other inputs are still transcribed and written: a batch
whose decoding raises is decoded input by input, so only the input at fault fails and the
others get the results they have alone (``on_error="return"`` of
:meth:`asr.runtime.offline.Transcriber.transcribe`). A bad model package, searcher, search
option or device exits with 2.

With ``--output-dir`` each file is written atomically, by one run at a time: the run holds the
directory's lock (:func:`asr.fileio.output_lock`) from before it loads the model until its last
write, and a second run on the same directory is refused (exit 2, naming it). The file of an
input that fails is removed when an earlier run left one (with a warning naming it), so that
the directory holds an output for exactly the inputs this run transcribed; the other files in it
are kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import unicodedata
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from asr.audio import AudioError
from asr.cli.options import (
    add_device_argument,
    add_num_threads_argument,
    add_search_arguments,
    add_streaming_arguments,
    device_from_args,
    hotword_score,
    set_num_threads,
)
from asr.constants import DEFAULT_OVERLAP_SECONDS, DEFAULT_WINDOW_SECONDS
from asr.decoding.context_graph import as_hotwords
from asr.decoding.registry import ROLES, SEARCHER_NAMES, resolve_searcher, searcher_gives_times
from asr.fileio import (
    OutputBusyError,
    OutputUnwritableError,
    check_writable_dir,
    is_control,
    one_line,
    output_lock,
    write_text_atomic,
)
from asr.package import PackageError
from asr.results import FailedInput, TranscriptionResult
from asr.runtime.endpoint import EndpointConfig
from asr.runtime.offline import check_window_seconds, load_model
from asr.runtime.streaming import check_chunking_options

logger = logging.getLogger(__name__)

FORMATS = ("text", "json", "srt", "vtt")
PAUSE = 0.8
MAX_CUE_SECONDS = 6.0
MAX_CUE_CHARS = 42
#: The longest file name, in bytes, that common file systems take (ext4, APFS, NTFS: 255).
MAX_NAME_BYTES = 255


FORMAT_HELP = ("text: one line per input (its text; SOURCE<TAB>TEXT with several inputs on "
               "stdout); "
               "json: JSON Lines, one object per input (text, tokens, times, words); "
               "srt / vtt: subtitles (several inputs need --output-dir; a searcher with "
               "token times, not aed_beam); an input that fails has no output, its error goes "
               "to stderr")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # "*" and not "+": run() says what is missing in its own words
    parser.add_argument("files", nargs="*",
                        help="audio files or named pipes (a shell's <(...)); '-' reads one "
                             "file from stdin")
    parser.add_argument("--model", required=True, help="model package directory")
    add_search_arguments(parser, "the package's")
    parser.add_argument("--hotwords", metavar="FILE|PHRASES",
                        help="bias the beam search toward these phrases: a file (one phrase per "
                             "line, optionally ending with ' :SCORE'; sherpa-onnx's format) or "
                             "phrases separated by ';' \"ALPHA BETA;GAMMA\" (default: none)")
    parser.add_argument("--hotwords-score", type=hotword_score, metavar="S",
                        help="per-token boost of a phrase without its own score (default: the "
                             "package's search.hotwords_score)")
    parser.add_argument("--format", choices=FORMATS, default="text", help=FORMAT_HELP)
    parser.add_argument("--streaming", action="store_true",
                        help="decode chunk by chunk with the streaming recognizer (default "
                             "searcher: the package's if it streams, else its greedy one)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="windows (offline) or streams (--streaming) decoded together")
    add_device_argument(parser)
    add_num_threads_argument(parser)
    add_streaming_arguments(parser)
    parser.add_argument("--no-endpoint", action="store_true",
                        help="streaming: one segment per input, the search never reset (by "
                             "default a pause, or 20 s of audio, ends a segment and the next "
                             "is searched afresh); every streaming searcher then gives its "
                             "offline result under the same chunking (cif_greedy, "
                             "attention_rescoring and cif_rescoring then keep the input's "
                             "encoder frames until its end, memory growing with it)")
    parser.add_argument("--window-seconds", type=float, default=None,
                        help="offline: long inputs are decoded in windows of this length (an "
                             "error with --streaming, which has no windows); memory grows with "
                             "its square (self-attention over its frames: the tiny test model "
                             "peaks 0.07 GB above its load at 30 s, 2.26 GB at 200 s) (default: "
                             f"{DEFAULT_WINDOW_SECONDS})")
    parser.add_argument("--overlap-seconds", type=float, default=None,
                        help="offline: least overlap of consecutive windows, cut in its "
                             "middle; for a chunked streaming encoder raised to its left context "
                             "(layers x (left chunks + its causal convolution's), logged), so "
                             "that a greedy search decodes every window's part as one window "
                             f"over the whole input would (default: {DEFAULT_OVERLAP_SECONDS})")
    parser.add_argument("--output-dir",
                        help="write <stem>.<format> per input here (control characters, path "
                             "separators and the characters <>:\"|?* as _, a device name "
                             "Windows reserves such as CON or com1.x as _CON, _com1.x; a stem too "
                             "long for a file name cut to fit), <stem>-2.<format> ... for a "
                             "stem an earlier input has, up to letter case and Unicode "
                             "normalization, or a directory there has (logged) (default: stdout)")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="show progress bars in audio seconds on stderr: transcribed, "
                               "and read of a file whose reading lasts over a second "
                               "(default: when stderr is a terminal)")
    progress.add_argument("--no-progress", dest="progress", action="store_false",
                          help="no progress bars")


# ----------------------------------------------------------------------------- formats


def _timestamp(seconds: float, sep: str) -> str:
    millis = max(0, int(round(seconds * 1000)))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


def cues(result) -> list[tuple[float, float, str]]:
    """Subtitle cues ``(start, end, text)`` of a :class:`asr.results.TranscriptionResult`.

    A word ends one encoder frame after its last token, and a transducer can emit the next
    word's first token on that same frame, so a cue's end is cut at the next cue's start: cues
    never overlap (players would show both at once).

    Raises:
        ValueError: naming the input, for a result without token times (its words only span
            their segment: :mod:`asr.results`), which cannot be cut into cues.
    """
    if result.tokens and not result.timestamps:
        raise ValueError(f"{result.source}: subtitles need token times, and this result has none "
                         f"(its searcher gives none)")
    out: list[tuple[float, float, str]] = []
    for segment in result.segments:
        current: list = []
        for word in segment.words:
            if current:
                text = " ".join(w.text for w in current + [word])
                if (word.start - current[-1].end >= PAUSE
                        or word.end - current[0].start > MAX_CUE_SECONDS
                        or len(text) > MAX_CUE_CHARS):
                    out.append((current[0].start, current[-1].end,
                                " ".join(w.text for w in current)))
                    current = []
            current.append(word)
        if current:
            out.append((current[0].start, current[-1].end, " ".join(w.text for w in current)))
    return [
        (start, max(start, min(end, out[k + 1][0])) if k + 1 < len(out) else end, text)
        for k, (start, end, text) in enumerate(out)
    ]


def format_result(result, fmt: str, with_source: bool) -> str:
    """One input's output in ``fmt`` (``text``, ``json``, ``srt`` or ``vtt``)."""
    if fmt == "text":
        # a source's tab or newline would break its line: written as \t, \n
        return f"{one_line(result.source)}\t{result.text}\n" if with_source else f"{result.text}\n"
    if fmt == "json":
        return json.dumps(result.to_dict(), ensure_ascii=False) + "\n"
    blocks = []
    for index, (start, end, text) in enumerate(cues(result), start=1):
        if fmt == "srt":
            blocks.append(f"{index}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n")
        else:
            blocks.append(f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n")
    body = "\n".join(blocks)
    return body if fmt == "srt" else "WEBVTT\n\n" + body


# ----------------------------------------------------------------------------- run


def _output_paths(sources: Sequence[str], out_dir: Path, fmt: str) -> list[Path]:
    """The file of ``--output-dir`` for each input: ``<stem>.<ext>``, its stem made safe
    (:func:`_safe_stem`) and cut short to fit a file name (:func:`_fit`), or
    ``<stem>-<n>.<ext>`` (n from 2) for a name an earlier input took (two ``a.wav`` of other
    directories) or that differs from one only by letter case or Unicode normalization
    (``A.wav`` and ``a.wav``: one file on case-insensitive file systems, macOS's and
    Windows's), or that a directory in ``out_dir`` has. An input whose file is not its plain
    ``<stem>.<ext>`` is logged with its file (and with the input that took the name), since the
    name alone does not tell."""
    ext = {"text": "txt"}.get(fmt, fmt)
    owner: dict[str, tuple[str, str]] = {}  # folded name -> (name, input)
    paths = []
    for source in sources:
        stem = "stdin" if source in ("-", "<stdin>") else Path(source).stem
        safe = _safe_stem(stem)
        plain = f"{stem}.{ext}"
        name = first = _fit(safe, f".{ext}")
        n = 1
        while _folded(name) in owner or (out_dir / name).is_dir():
            n += 1
            name = _fit(safe, f"-{n}.{ext}")
        if name != plain:
            why = []
            why += _unsafe_name_reasons(stem)
            if not name.startswith(safe):
                why.append(f"its name is longer than a file name may be ({MAX_NAME_BYTES} bytes)")
            if name != first and _folded(first) not in owner:
                why.append(f"{out_dir / first} is a directory")
            elif name != first:
                taken, earlier = owner[_folded(first)]
                why.append(f"{out_dir / taken} is {one_line(earlier)}'s" if taken == first else
                           f"{out_dir / taken} is {one_line(earlier)}'s (file names that differ "
                           f"only in letter case are one file on case-insensitive file systems)")
            logger.warning("%s is written to %s: %s", one_line(source), out_dir / name,
                           "; ".join(why))
        owner[_folded(name)] = (name, source)
        paths.append(out_dir / name)
    return paths


#: Characters Windows forbids in a file name, besides path separators and control characters.
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')
#: The device names Windows reserves: a file named so, in any letter case and with any extension
#: (``con.txt``, ``Com1.backup.txt``), cannot be opened there.
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"{port}{n}" for port in ("COM", "LPT") for n in "0123456789¹²³"}
)


def _is_windows_device(stem: str) -> bool:
    """Whether a file named ``stem`` (plus any extension) is a device name Windows reserves:
    its part before the first dot, trailing spaces aside (Windows drops them), in any case."""
    return stem.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_DEVICES


def _safe_stem(stem: str) -> str:
    """``stem`` with each control character (tab, newline, ...), line or paragraph separator
    (:func:`asr.fileio.is_control`), path separator (``/``, ``\\``) and character Windows
    forbids in a file name (``<>:"|?*``) replaced by ``_``, and a leading ``_`` for a name
    Windows reserves for a device (:func:`_is_windows_device`: ``CON`` -> ``_CON``);
    ``audio`` for an empty stem."""
    safe = "".join("_" if ch in "/\\" or ch in _WINDOWS_FORBIDDEN or is_control(ch) else ch
                   for ch in stem)
    if _is_windows_device(safe):
        safe = "_" + safe
    return safe or "audio"


def _unsafe_name_reasons(stem: str) -> list[str]:
    """Why :func:`_safe_stem` changes ``stem``, for the log (empty: it does not)."""
    reasons = []
    if any(ch in "/\\" or is_control(ch) for ch in stem):
        reasons.append("its name holds control characters or path separators")
    if any(ch in _WINDOWS_FORBIDDEN for ch in stem):
        reasons.append('its name holds characters Windows forbids in file names (<>:"|?*)')
    if _is_windows_device(stem):
        reasons.append("its name is a device name Windows reserves (CON, PRN, AUX, NUL, COM0-9, "
                       "LPT0-9)")
    return reasons


def _fit(stem: str, suffix: str) -> str:
    """``stem + suffix``, the stem cut short (at a character) so that the name fits in
    :data:`MAX_NAME_BYTES` bytes of UTF-8."""
    room = MAX_NAME_BYTES - len(suffix.encode())
    return stem.encode()[:room].decode(errors="ignore") + suffix


def _folded(name: str) -> str:
    """The one form of the file names a case-insensitive file system takes for one file."""
    return unicodedata.normalize("NFC", name).casefold()


def run(args: argparse.Namespace) -> int:
    files = list(args.files)
    if not files:
        logger.error("asr transcribe: no audio files given ('-' reads stdin)")
        return 2
    if files.count("-") > 1:
        logger.error("asr transcribe: '-' (stdin) can be given only once")
        return 2
    # asr decode --searcher takes several: here the second is an input, found missing only
    # after the first inputs were decoded
    stray = next((f for f in files if f in (*SEARCHER_NAMES, *ROLES) and not Path(f).exists()),
                 None)
    if stray is not None:
        logger.error("asr transcribe: input %s is no file but a searcher's name: --searcher "
                     "takes one searcher here (asr decode's takes several); give one, or "
                     "./%s for a file of that name", stray, stray)
        return 2
    try:  # before the model is loaded
        check_chunking_options(args.streaming, args.max_left_seconds)
    except ValueError as err:
        logger.error("asr transcribe: %s", err)
        return 2
    if args.no_endpoint and not args.streaming:
        logger.error("asr transcribe: --no-endpoint sets the endpointing of --streaming, and "
                     "an offline decode has none: add --streaming or drop --no-endpoint")
        return 2
    windowing = [option for option, value in (("--window-seconds", args.window_seconds),
                                              ("--overlap-seconds", args.overlap_seconds))
                 if value is not None]
    if args.streaming and windowing:  # as the chunking options are refused offline
        logger.error("asr transcribe: %s: the offline windows, which --streaming does not use "
                     "(it decodes each input as one stream): drop %s", ", ".join(windowing),
                     "them" if len(windowing) > 1 else "it")
        return 2
    if args.window_seconds is None:
        args.window_seconds = DEFAULT_WINDOW_SECONDS
    if args.overlap_seconds is None:
        args.overlap_seconds = DEFAULT_OVERLAP_SECONDS
    if not args.streaming:
        try:  # the rest (the step on the encoder's chunk grid) needs the model
            check_window_seconds(args.window_seconds, args.overlap_seconds)
        except ValueError as err:
            logger.error("asr transcribe: --window-seconds, --overlap-seconds: %s", err)
            return 2
    if args.format in ("srt", "vtt") and len(files) > 1 and not args.output_dir:
        logger.error("asr transcribe: --format %s with several inputs needs --output-dir",
                     args.format)
        return 2
    if args.batch_size < 1:
        logger.error("asr transcribe: --batch-size must be >= 1, got %d", args.batch_size)
        return 2
    try:
        set_num_threads(args.num_threads)
        if args.output_dir:  # before the work, which a file in the way would throw away
            check_writable_dir(args.output_dir, "--output-dir")
    except ValueError as err:
        logger.error("asr transcribe: %s", err)
        return 2
    with ExitStack() as lock:
        if args.output_dir:
            try:
                lock.enter_context(output_lock(Path(args.output_dir)))
            except (OutputBusyError, OutputUnwritableError) as err:
                logger.error("asr transcribe: %s", err)
                return 2
        return _transcribe(args, files)


def _transcribe(args: argparse.Namespace, files: list[str]) -> int:
    """Loads the model, transcribes ``files`` and writes their outputs (the exit status)."""
    if args.hotwords_score is not None:
        args.search_overrides.append(f"search.hotwords_score={args.hotwords_score}")
    try:
        model = load_model(args.model, device=device_from_args(args.device),
                           searcher=args.searcher, search=args.search_overrides)
        if not args.streaming:  # a missing LM fails here
            model.searcher(args.searcher)  # built once (cached); with hotwords, per call
        else:  # a searcher that does not stream fails here
            model.streaming_recognizer(args.searcher, chunk_size=args.chunk_size,
                                       left_chunks=args.left_chunks,
                                       max_left_seconds=args.max_left_seconds)
        # a missing or unreadable hotword file fails here; read once, so the phrases checked
        # are those used. Their graph (phrases the tokenizer cannot spell fail) is built once,
        # by transcribe_iter before it reads any input; a searcher that ignores them warns there
        hotwords = None if args.hotwords is None else as_hotwords(args.hotwords)
    except PackageError as err:
        logger.error("asr transcribe: cannot load model package: %s", err)
        return 2
    except (OSError, ValueError) as err:
        logger.error("asr transcribe: %s", err)
        return 2
    if args.format in ("srt", "vtt") and not args.streaming:  # every streaming searcher times
        name = resolve_searcher(args.searcher or model.runtime.searcher, model.runtime.model)
        if not searcher_gives_times(name):
            logger.error("asr transcribe: --format %s needs token times, which searcher %s does "
                         "not give: use --format text or json, or a searcher with token times "
                         "(--searcher)", args.format, name)
            return 2
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        results = model.transcribe_iter(
            files, batch_size=args.batch_size, streaming=args.streaming,
            window_seconds=args.window_seconds, overlap_seconds=args.overlap_seconds,
            progress=progress, on_error="return", searcher=args.searcher,
            hotwords=hotwords, chunk_size=args.chunk_size, left_chunks=args.left_chunks,
            max_left_seconds=args.max_left_seconds,
            endpoint=EndpointConfig(enabled=False) if args.no_endpoint else None,
        )
    except (AudioError, ValueError, KeyError) as err:
        logger.error("asr transcribe: %s", err)
        return 2
    failed = 0
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = _output_paths(files, out_dir, args.format)
    elif getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        # a name or word the terminal's encoding lacks (PYTHONIOENCODING=latin-1, a C locale on
        # old Pythons) is written as a \uXXXX escape -- valid JSON inside strings -- instead of
        # failing after all the work
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        # each result is written as it comes (inputs are decoded group by group): a run stopped
        # on the way keeps what it has done
        for index, result in enumerate(results):
            # the progress bar, on the terminal, is cleared for the line and drawn again after
            with tqdm.external_write_mode():
                failed += _write_result(result, args.format, files,
                                        None if out_dir is None else paths[index])
    except (AudioError, ValueError, KeyError) as err:  # e.g. windows a searcher cannot join
        logger.error("asr transcribe: %s", err)
        return 2
    if failed and len(files) > 1:
        logger.error("asr transcribe: %d of %d inputs failed", failed, len(files))
    return 1 if failed else 0


def _write_result(result: TranscriptionResult | FailedInput, fmt: str, files: Sequence[str],
                  path: Path | None) -> int:
    """Writes one input's output to ``path`` (``--output-dir``) or stdout, or logs its error and
    removes the file an earlier run left at ``path``; returns 1 for a failed input, else 0."""
    if isinstance(result, FailedInput):
        logger.error("%s", result.error)
        if path is not None and path.is_file():
            path.unlink()  # an earlier run's: it would pass for this run's output
            logger.warning("removed %s, an earlier run's output for %s, which failed now", path,
                           result.source)
        return 1
    # a file of its own holds its text alone, whatever the number of inputs
    text = format_result(result, fmt, with_source=path is None and len(files) > 1)
    if path is not None:
        write_text_atomic(path, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0
