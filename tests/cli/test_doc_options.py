"""The command lines the documentation names exist: every ``--option`` a doc gives an ``asr``
subcommand is one of that subcommand's options, the ``asr export-onnx`` synopsis of docs/ONNX.md
names all of its options, and the mini_tts README names every option of its ``run.sh``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from asr.cli.main import SUBCOMMANDS, build_parser

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted([REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("recipes/*/*.md")])
#: ``asr NAME``, longest names first (``decode-onnx`` before ``decode``).
_NAMES = "|".join(sorted(map(re.escape, SUBCOMMANDS), key=len, reverse=True))
_COMMAND = re.compile(rf"\basr ({_NAMES})\b")
#: What ends one command's options inside a span: another program or a comment.
_END = re.compile(r"\basr [a-z]|\bpython\b|\btorchrun\b|#")
_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of its nested subcommands (``asr prepare fbank``)."""
    found = set()
    for action in parser._actions:
        found.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options(sub)
    return found


def command_options(command: str) -> set[str]:
    """The options ``asr COMMAND`` accepts."""
    parser = build_parser(command)
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return _options(sub.choices[command])


def command_spans(text: str) -> list[str]:
    """The inline code spans and the (comment-stripped, continuation-joined) code-block lines of
    a Markdown text: where a doc writes command lines."""
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for block in re.findall(r"```\w*\n(.*?)```", text, flags=re.S):
        spans += re.sub(r"\\\n\s*(#\s*)?", " ", block).splitlines()
    return spans


def named_options(text: str) -> list[tuple[str, str, str]]:
    """(command, option, span) for each option a doc gives an ``asr`` subcommand."""
    named = []
    for span in command_spans(text):
        span = re.sub(r"^\s*#\s*", "", span)
        for match in _COMMAND.finditer(span):
            rest = span[match.end():]
            end = _END.search(rest)
            for option in _OPTION.findall(rest[: end.start() if end else None]):
                named.append((match.group(1), option, span.strip()))
    return named


def test_the_spans_are_found():
    """The extraction sees the options of the README's commands (so an empty list is no pass)."""
    named = named_options((REPO / "README.md").read_text(encoding="utf-8"))
    assert ("transcribe", "--left-chunks") in {n[:2] for n in named}
    assert ("export-onnx", "--int8") in {n[:2] for n in named}


def test_an_unknown_option_is_caught():
    named = named_options("Run `asr decode --exp-dir E --no-such-option 3`.\n")
    assert [(c, o) for c, o, _ in named if o not in command_options(c)] == [
        ("decode", "--no-such-option")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_option_a_doc_names_exists(doc):
    options: dict[str, set[str]] = {}
    unknown = []
    for command, option, span in named_options(doc.read_text(encoding="utf-8")):
        if command not in options:
            options[command] = command_options(command)
        if option not in options[command]:
            unknown.append(f"asr {command} {option}: {span}")
    assert unknown == []


def test_the_onnx_synopsis_names_every_export_option():
    text = (REPO / "docs" / "ONNX.md").read_text(encoding="utf-8")
    synopsis = re.search(r"`(asr export-onnx [^`]+)`", text).group(1)
    missing = command_options("export-onnx") - set(_OPTION.findall(synopsis)) - {"--log-level", "--help"}
    assert missing == set(), synopsis


def test_the_mini_tts_readme_names_every_run_sh_option():
    usage = (REPO / "egs" / "mini_tts" / "ASR" / "run.sh").read_text(encoding="utf-8")
    usage = usage.split('usage="', 1)[1].split("defaults:", 1)[0]
    readme = (REPO / "recipes" / "mini_tts" / "README.md").read_text(encoding="utf-8")
    assert sorted(set(_OPTION.findall(usage)) - set(_OPTION.findall(readme))) == []
