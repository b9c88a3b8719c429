"""Read training sentences for tokenizers from transcript files.

The format is chosen by the path (first matching rule):

* a directory: every ``*.trans.txt`` below it, in sorted path order (a LibriSpeech tree);
* ``*.jsonl.gz`` / ``*.jsonl``: a lhotse manifest of supervisions or cuts; the ``text`` of every
  supervision, in manifest order (gzip-compressed if and only if its name ends in ``.gz``, as
  lhotse reads it: :func:`asr.fileio.check_gzip_name`);
* ``*.trans.txt`` or a file named ``text`` (either with ``.gz`` after it): ``utt_id TEXT``
  lines (LibriSpeech / Kaldi); the first field is dropped;
* anything else: plain text, one sentence per line.

A text file (plain or Kaldi) may be gzip-compressed, told by its first bytes whatever its name
(:func:`asr.fileio.read_text`): LibriSpeech's LM corpus ``librispeech-lm-norm.txt.gz`` is read
as it ships. Its lines end at ``\\n`` or ``\\r\\n`` (:func:`asr.fileio.read_lines`); a lone
``\\r`` inside a line is whitespace of that sentence, as in Kaldi, not the end of it.

Each sentence's whitespace is normalised (:func:`asr.tokenizers.base.normalize_whitespace`, as
the tokenizers' trainers normalise it) and empty sentences are skipped; the text is otherwise
returned as written (no case change).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from asr.fileio import check_gzip_name, read_lines
from asr.tokenizers.base import check_text, normalize_whitespace

logger = logging.getLogger(__name__)

#: The command-line help of a ``--transcripts`` option read by :func:`read_transcripts`.
TRANSCRIPTS_HELP = (
    "LibriSpeech dirs / *.trans.txt, Kaldi 'text', lhotse *.jsonl.gz, or plain text files (one "
    "sentence per line); a text file may be gzip-compressed whatever its name, e.g. "
    "librispeech-lm-norm.txt.gz"
)


def transcript_kind(path: Path) -> str:
    """``"dir"``, ``"lhotse"``, ``"kaldi"`` or ``"plain"``, by the rules of this module."""
    name = path.name
    if path.is_dir():
        return "dir"
    if name.endswith((".jsonl.gz", ".jsonl")):
        return "lhotse"
    base = name.removesuffix(".gz")
    if base.endswith(".trans.txt") or base == "text":
        return "kaldi"
    return "plain"


def read_transcripts(
    paths: Iterable[str | Path],
    check: Callable[[str], object] | None = None,
    skip: Callable[[object], bool] | None = None,
) -> list[str]:
    """All sentences of ``paths``, in order (see the module docstring for the formats).

    Args:
        paths: the transcript files and directories.
        check: a further check of each sentence, raising ValueError with what is wrong (e.g.
            ``asr lm --unit word``'s :func:`asr.decoding.ngram_train.check_words`); None: none.
        skip: which items of a lhotse manifest (cuts, supervisions) to leave out, e.g. the
            speed copies of a speed-perturbed cut manifest
            (:func:`asr.data.filtering.is_speed_copy`: ``asr bpe`` and ``asr lm`` count each
            utterance's text once); how many were is logged. None: none.

    Raises:
        FileNotFoundError: for a path that does not exist.
        ValueError: for a directory without ``*.trans.txt`` files, and for a sentence that
            writes the tokenizers' word-boundary mark ``▁`` (:func:`asr.tokenizers.base.check_text`;
            a tokenizer or LM trained on it would read it back as a space) or that ``check``
            refuses, naming the file and line that hold it (the item of a lhotse manifest).
    """
    sentences: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"transcript file {path} does not exist")
        for where, number, sentence in _iter_path(path, skip):
            if not sentence:
                continue
            try:
                check_text(sentence)
                if check is not None:
                    check(sentence)
            except ValueError as err:
                raise ValueError(f"transcript file {where.label(number)}: {err}") from None
            sentences.append(sentence)
    return sentences


@dataclass(frozen=True)
class _Where:
    """Where a file's sentences are, told by their number only once one is refused: labelling
    every sentence as it was read cost 0.9-1.2 us a line, a fifth of the reading (~40 s over
    the 40M lines of ``librispeech-lm-norm.txt``, on a loaded 2-core machine)."""

    prefix: str
    suffix: str = ""

    def label(self, number: int) -> str:
        """``file:line``, or the item of a lhotse manifest, of the sentence ``number``."""
        return f"{self.prefix}{number}{self.suffix}"


def _iter_path(path: Path, skip: Callable[[object], bool] | None
               ) -> Iterator[tuple[_Where, int, str]]:
    """(its file, its line or item number there, sentence) of each sentence of ``path``
    (without the manifest items that ``skip`` leaves out)."""
    kind = transcript_kind(path)
    if kind == "dir":
        files = sorted(path.rglob("*.trans.txt"))
        if not files:
            raise ValueError(f"directory {path} holds no *.trans.txt files")
        for file in files:
            yield from _iter_kaldi(file)
    elif kind == "lhotse":
        yield from _iter_lhotse(path, skip)
    elif kind == "kaldi":
        yield from _iter_kaldi(path)
    else:
        where = _Where(f"{path}:")
        for number, line in enumerate(_lines(path), start=1):
            yield where, number, normalize_whitespace(line)


def _lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file, plain or gzip-compressed, broken at ``\\n`` and
    ``\\r\\n`` only (:func:`asr.fileio.read_lines`: a lone ``\\r`` is whitespace inside its
    line, as in Kaldi)."""
    return iter(read_lines(path))


def _iter_kaldi(path: Path) -> Iterator[tuple[_Where, int, str]]:
    where = _Where(f"{path}:")
    for number, line in enumerate(_lines(path), start=1):
        fields = line.split(maxsplit=1)
        if len(fields) == 2:
            yield where, number, normalize_whitespace(fields[1])


def _iter_lhotse(path: Path, skip: Callable[[object], bool] | None
                 ) -> Iterator[tuple[_Where, int, str]]:
    from lhotse import load_manifest_lazy

    check_gzip_name(path, "lhotse manifest")  # lhotse tells gzip by the name
    skipped = 0
    where = _Where(f"{path} (item ", ")")
    for number, item in enumerate(load_manifest_lazy(path), start=1):
        if skip is not None and skip(item):
            skipped += 1
            continue
        supervisions = getattr(item, "supervisions", None)
        if supervisions is None:
            supervisions = [item]
        for sup in supervisions:
            text = getattr(sup, "text", None)
            if text:
                yield where, number, normalize_whitespace(text)
    if skipped:
        logger.info("%s: left out %d of its %d items (read_transcripts' skip)", path, skipped,
                    number)
