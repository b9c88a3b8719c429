"""The command lines the documentation names exist: every ``--option`` a doc gives an ``asr``
subcommand is one of that subcommand's options (and one it gives ``python -m asr.serve.client``
one of the client's), every config key it names (``search.lm_weight``)
is a field of the experiment config, every module, function or class it names in code
(``run.train.check_data_inputs``, ``asr.results.FailedInput``) exists, the ``asr export-onnx``
synopsis of docs/ONNX.md names all of its options, and the mini_tts README names every option of its
``run.sh`` with its default."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import inspect
import pkgutil
import re
import typing
from pathlib import Path
from typing import Any

import pytest

import asr
from asr.cli.main import SUBCOMMANDS, build_parser
from asr.encoders.chunked import ChunkedEncoder
from asr.experiment import ExperimentConfig
from asr.model import ASRModel
from asr.serve.client import build_parser as client_parser

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted([REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("recipes/*/*.md")])
#: ``asr NAME``, longest names first (``decode-onnx`` before ``decode``).
_NAMES = "|".join(sorted(map(re.escape, SUBCOMMANDS), key=len, reverse=True))
#: Modules the docs run as ``python -m MODULE`` with options -> their parsers.
_MODULE_PARSERS = {"asr.serve.client": client_parser}
_MODULES_RUN = "|".join(map(re.escape, _MODULE_PARSERS))
_COMMAND = re.compile(rf"\basr ({_NAMES})\b|\bpython -m ({_MODULES_RUN})(?![\w.])")
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
    """The options ``asr COMMAND`` accepts (or ``python -m COMMAND``, a module of
    :data:`_MODULE_PARSERS`)."""
    if command in _MODULE_PARSERS:
        return _options(_MODULE_PARSERS[command]())
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
    """(command, option, span) for each option a doc gives an ``asr`` subcommand (or a module
    run as ``python -m``)."""
    named = []
    for span in command_spans(text):
        span = re.sub(r"^\s*#\s*", "", span)
        for match in _COMMAND.finditer(span):
            rest = span[match.end():]
            end = _END.search(rest)
            for option in _OPTION.findall(rest[: end.start() if end else None]):
                named.append((match.group(1) or match.group(2), option, span.strip()))
    return named


def test_the_spans_are_found():
    """The extraction sees the options of the README's commands (so an empty list is no pass)."""
    named = named_options((REPO / "README.md").read_text(encoding="utf-8"))
    assert ("transcribe", "--left-chunks") in {n[:2] for n in named}
    assert ("export-onnx", "--int8") in {n[:2] for n in named}
    assert ("asr.serve.client", "--hotwords-score") in {n[:2] for n in named}


def test_an_unknown_option_is_caught():
    named = named_options("Run `asr decode --exp-dir E --no-such-option 3`.\n"
                          "```bash\npython -m asr.serve.client a.flac --timeout 5 --no-such\n```\n")
    assert [(c, o) for c, o, _ in named if o not in command_options(c)] == [
        ("decode", "--no-such-option"), ("asr.serve.client", "--no-such")]


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
    documented = set(_OPTION.findall(synopsis))
    parser = build_parser("export-onnx")
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    hidden = {o for a in sub.choices["export-onnx"]._actions if a.help == argparse.SUPPRESS
              for o in a.option_strings}  # an old name kept as an alias (--force)
    missing = command_options("export-onnx") - documented - hidden - {"--log-level", "--help"}
    assert missing == set(), synopsis


def test_the_mini_tts_readme_names_every_run_sh_option():
    usage = (REPO / "egs" / "mini_tts" / "ASR" / "run.sh").read_text(encoding="utf-8")
    usage = usage.split('usage="', 1)[1].split("defaults:", 1)[0]
    readme = (REPO / "recipes" / "mini_tts" / "README.md").read_text(encoding="utf-8")
    assert sorted(set(_OPTION.findall(usage)) - set(_OPTION.findall(readme))) == []


def run_sh_defaults(script: str) -> dict[str, str]:
    """``--option`` -> default value of a recipe script's ``name=value`` settings (before its
    usage text; quotes and comments dropped)."""
    settings = script.split('usage="', 1)[0]
    return {"--" + name.replace("_", "-"): value.strip('"')
            for name, value in re.findall(r'^([a-z_]+)=("[^"]*"|\S*)', settings, flags=re.M)}


def quoted_defaults(text: str) -> dict[str, set[str]]:
    """``--option`` -> the values a README's "Options and their defaults" list gives it in its
    inline code (``--lm-weight 0.55``; alternatives such as ``token|word`` are no value)."""
    section = text.split("Options and their defaults", 1)[1].split("\n\n", 1)[0]
    quoted: dict[str, set[str]] = {}
    for span in re.findall(r"`([^`\n]+)`", section):
        for option, value in re.findall(r'(--[a-z][a-z0-9-]*) ("[^"]*"|[^\s"|-][^\s|]*)(?=\s|$)',
                                        span):
            quoted.setdefault(option, set()).add(value.strip('"'))
    return quoted


def default_mismatches(script: str, readme: str, here: str) -> list[str]:
    """The options of ``script`` with a default (``$HERE`` read as ``here``) that the README
    gives values (placeholders such as ``N`` aside) of which none is that default."""
    defaults = run_sh_defaults(script)
    mismatches = []
    for option, values in quoted_defaults(readme).items():
        values = {v for v in values if not re.fullmatch(r"[A-Z]+", v)}
        default = defaults.get(option, "").replace("$HERE", here)
        if default and values and default not in values:
            mismatches.append(f"{option}: README {sorted(values)}, run.sh {default!r}")
    return mismatches


def test_a_changed_run_sh_default_is_caught():
    script = 'lm_weight=0.6  # tuned\nbeam_size=8\nusage="..."\n'
    readme = "Options and their defaults:\n* LM: `--lm-weight 0.55`, `--beam-size 8`.\n"
    assert default_mismatches(script, readme, "") == ["--lm-weight: README ['0.55'], run.sh '0.6'"]


def test_the_mini_tts_readme_quotes_run_sh_defaults():
    """The defaults the mini_tts README lists (``--lm-weight 0.55``, ``--time-budget 1710``, ...)
    are run.sh's, which dev tuning changes."""
    script = (REPO / "egs" / "mini_tts" / "ASR" / "run.sh").read_text(encoding="utf-8")
    readme = (REPO / "recipes" / "mini_tts" / "README.md").read_text(encoding="utf-8")
    assert len(quoted_defaults(readme)) >= 20  # the list is found, so a pass compares something
    assert default_mismatches(script, readme, "egs/mini_tts/ASR") == []


def _config_field(parts: list[str]) -> bool:
    """Whether ``parts`` is a field path of :class:`asr.experiment.ExperimentConfig`."""
    cls: Any = ExperimentConfig
    for part in parts:
        if not dataclasses.is_dataclass(cls):
            return False
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return False
        cls = next((a for a in (hints[part], *typing.get_args(hints[part]))
                    if dataclasses.is_dataclass(a)), hints[part])
    return True


def _module_attribute(dotted: str) -> bool:
    """Whether ``asr.<dotted>`` names a module or an attribute of one (ARCHITECTURE.md writes
    module paths without the package)."""
    parts = f"asr.{dotted}".split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attribute in parts[i:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


#: Objects the docs name by a section's word: ``encoder.forward_chunk`` is the encoder's method.
_OBJECTS = {"encoder": ChunkedEncoder, "model": ASRModel}


def _method(dotted: str) -> bool:
    owner, _, name = dotted.partition(".")
    return owner in _OBJECTS and hasattr(_OBJECTS[owner], name)


def named_config_keys(text: str) -> list[str]:
    """The ``section.field...`` config keys a doc names (``data.fbank``, ``search.lm_weight=``)."""
    sections = "|".join(f.name for f in dataclasses.fields(ExperimentConfig))
    keys = re.findall(rf"(?<![\w/.-])((?:{sections})(?:\.[a-z_]\w*)+)(?=[`=:\s,)\]])", text)
    return [k for k in dict.fromkeys(keys) if k.rsplit(".", 1)[1] not in _FILE_SUFFIXES]


_FILE_SUFFIXES = {"yaml", "py", "pt", "json", "txt", "tar", "md", "sh", "onnx", "arpa", "h", "log"}


def test_an_unknown_config_key_is_caught():
    keys = named_config_keys("`--set train.max_epochs=2 search.no_such_field=1`")
    assert [k for k in keys if not _config_field(k.split("."))] == ["search.no_such_field"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_key_a_doc_names_exists(doc):
    unknown = [key for key in named_config_keys(doc.read_text(encoding="utf-8"))
               if not _config_field(key.split(".")) and not _module_attribute(key)
               and not _method(key)]
    assert unknown == []


#: The package's top-level modules and subpackages (``run``, ``decoding``, ``fileio``, ...).
_MODULES = {m.name for m in pkgutil.iter_modules(asr.__path__)}


def named_code_paths(text: str) -> list[str]:
    """The dotted names of ``asr``'s code that a doc writes in inline code, without ``asr.``
    (``run.train.check_data_inputs``, ``asr.results.FailedInput`` -> ``results.FailedInput``):
    those whose first part is one of the package's modules; file names (``export.json``) aside,
    and code blocks, whose examples name their own variables (``model.transcribe``)."""
    names = []
    for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        for name in re.findall(r"(?<![\w/.-])([a-z_]\w*(?:\.[A-Za-z_]\w*)+)", span):
            if name.rsplit(".", 1)[-1] in _FILE_SUFFIXES:
                continue
            if name.startswith("asr.") or name.split(".", 1)[0] in _MODULES:
                names.append(name.removeprefix("asr."))
    return list(dict.fromkeys(names))


def test_an_unknown_code_name_is_caught():
    names = named_code_paths("`run.train.check_data_inputs` and `run.train.no_such_function`, "
                             "`asr.results.FailedInput`, `asr.results.NoSuchResult`, "
                             "`export.json`, "
                             "`asr.StreamingRecognizer`, `asr.NoSuchFace`")
    assert [n for n in names if not _module_attribute(n)] == [
        "run.train.no_such_function", "results.NoSuchResult", "NoSuchFace"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_code_name_a_doc_names_exists(doc):
    unknown = [name for name in named_code_paths(doc.read_text(encoding="utf-8"))
               if not _module_attribute(name) and not _config_field(name.split("."))
               and not _method(name)]
    assert unknown == []


@functools.cache
def _package_classes() -> dict[str, list[type]]:
    """The classes ``asr`` defines, by name (every module imported)."""
    found: dict[str, list[type]] = {}
    for info in pkgutil.walk_packages(asr.__path__, "asr."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == module.__name__:
                found.setdefault(name, []).append(obj)
    return found


def _class_member(cls: type, name: str) -> bool:
    """Whether instances of ``cls`` have ``name``: a class attribute, a dataclass field or an
    attribute its code sets on ``self`` (``self.stream = ...``)."""
    if hasattr(cls, name) or name in getattr(cls, "__dataclass_fields__", {}):
        return True
    return any(re.search(rf"\bself\.{name}\b\s*(:[^=\n]+)?=(?!=)", inspect.getsource(c))
               for c in cls.__mro__ if c.__module__.startswith("asr."))


def _class_path(dotted: str, classes: dict[str, list[type]]) -> bool:
    """Whether ``Class.member...`` names a member of one of the package's classes of that name
    (past an instance attribute, whose type is unknown here, the rest is not checked)."""
    head, *members = dotted.split(".")
    for cls in classes.get(head, []):
        obj: Any = cls
        for member in members:
            if not (inspect.isclass(obj) and _class_member(obj, member)):
                break
            obj = getattr(obj, member, None)
            if obj is None:
                return True
        else:
            return True
    return False


def named_class_paths(text: str) -> list[str]:
    """The ``Class.member`` names (``Transcriber.window_context``, ``Progress.epoch_stream``)
    that a doc writes in inline code, file names (``README.md``) aside, and code blocks."""
    names = []
    for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        for name in re.findall(r"(?<![\w/.-])([A-Z]\w*(?:\.[A-Za-z_]\w*)+)", span):
            if name.rsplit(".", 1)[-1] not in _FILE_SUFFIXES:
                names.append(name)
    return list(dict.fromkeys(names))


def test_an_unknown_class_member_is_caught():
    names = named_class_paths("`Transcriber.window_context`, `Transcriber.no_such_method`, "
                              "`EpochBatches.stream` (set in `__init__`), `Progress.epoch_stream`, "
                              "`NoSuchClass.x`, `R.yaml`")
    assert [n for n in names if not _class_path(n, _package_classes())] == [
        "Transcriber.no_such_method", "NoSuchClass.x"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_class_member_a_doc_names_exists(doc):
    classes = _package_classes()
    names = named_class_paths(doc.read_text(encoding="utf-8"))
    if doc.name == "ARCHITECTURE.md":
        assert len(names) >= 20  # the names are found, so a pass compares something
    assert [name for name in names if not _class_path(name, classes)] == []
