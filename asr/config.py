"""Typed, strict configuration: dataclasses loaded from YAML with ``--set a.b=c`` overrides.

Every configurable part of the toolkit is a dataclass with typed fields and defaults. This module
turns nested plain data (from YAML, or overrides) into those dataclasses and back, and refuses
anything it does not understand:

* an unknown key is an error naming its full path, with a did-you-mean hint, except a key the
  dataclass lists in its ``RETIRED_KEYS`` (a field it no longer has, that configs saved before
  still name): it is ignored, with a warning;
* a YAML mapping that names a key twice is an error naming the file and both lines;
* a value of the wrong type is an error naming the path, the expected type and the value;
* :func:`load_config`'s errors start with where the fault is: the YAML file, or ``the --set
  overrides`` when the file loads without them;
* ``--set a.b=c`` values are parsed as YAML scalars (``3``, ``0.5``, ``true``, ``[1, 2]``, ``null``)
  and then checked against the field type, so ``--set optim.lr=1e-3`` becomes a float;
* a number is what YAML reads as one, with YAML 1.2's exponents (``1e-3``, ``1.0e3``: strings to
  PyYAML's YAML 1.1); a quoted number (``lr: "0.5"``, ``--set 'lr="0.5"'``) is a string, refused
  for a number field as a boolean is;
* a mapping may name YAML files it extends with ``_base_: FILE`` (or a list of files), relative
  to the file that names them: the bases are merged in order, then the mapping's own keys
  (mappings merge key by key, anything else replaces). Recipes thus name a preset instead of
  copying it::

      encoder:
        _base_: ../presets/encoder_m.yaml   # a file of EncoderConfig fields
        chunk_size: 16                      # this recipe's own value

Supported field types: ``bool``, ``int`` (a whole number written as a float accepted:
``1e3``, ``2.0``; never ``1.5``, NaN, infinity, a boolean or a string), ``float`` (ints
accepted; never a boolean or a string), ``str``, ``pathlib.Path``, ``Literal[...]``,
``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]`` and nested dataclasses (a missing
nested section takes its defaults; ``null`` is allowed only for optional ones).

Example:
    >>> cfg = load_config(ExperimentConfig, "recipes/mini_tts/conformer_transducer.yaml",
    ...                   overrides=["train.max_steps=100"])
    >>> save_config(cfg, exp_dir / "config.yaml")
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from asr.fileio import read_text, relative_path_hint, write_text_atomic

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "BASE_KEY",
    "ConfigError",
    "apply_overrides",
    "config_path_hint",
    "from_dict",
    "load_config",
    "parse_override",
    "read_yaml",
    "save_config",
    "to_dict",
]

#: The key of a mapping that names the YAML files it extends.
BASE_KEY = "_base_"


class ConfigError(ValueError):
    """A configuration value or key that does not fit its dataclass schema."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping naming a key twice (PyYAML keeps the last
    silently, so the first value would be lost without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *alias`` may come with keys
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # the base class reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} is given twice (first on line {seen[key].line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


# YAML 1.2's floats with an exponent that YAML 1.1 (PyYAML) reads as strings: no dot (1e3,
# 1e-3) or an unsigned exponent (1.0e3); YAML 1.1's own forms stay as they are.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _load_yaml(text: str) -> Any:
    """The data of YAML ``text`` (safe types only; a mapping may not name a key twice)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)


def _where(path: str) -> str:
    return path if path else "<root>"


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _not_a_number(value: Any, expected: str, path: str) -> ConfigError:
    """The error for ``value`` in a number field; a string that spells a number was quoted."""
    hint = ""
    if isinstance(value, str):
        try:
            float(value)
            hint = " (a string: write the number without quotes)"
        except ValueError:
            pass
    return ConfigError(f"{_where(path)}: expected {expected}, got {value!r}{hint}")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Checks and converts ``value`` to type ``tp``; raises ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{_where(path)}: null is not allowed (expected {_type_name(tp)})")
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(value, option, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{_where(path)}: {value!r} matches none of {_type_name(tp)}: {errors}")
    if value is None:
        raise ConfigError(f"{_where(path)}: null is not allowed (expected {_type_name(tp)})")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{_where(path)}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise ConfigError(f"{_where(path)}: expected a list, got {value!r}")
        items = list(value)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise ConfigError(f"{_where(path)}: expected {len(args)} items, got {len(items)}")
            return tuple(
                _convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(items, args))
            )
        item_type = args[0] if args else Any
        converted = [_convert(v, item_type, f"{path}[{i}]") for i, v in enumerate(items)]
        return tuple(converted) if (origin is tuple or tp is tuple) else converted
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{_where(path)}: expected a mapping, got {value!r}")
        key_type, value_type = args if args else (Any, Any)
        return {
            _convert(k, key_type, f"{path}.<key>"): _convert(v, value_type, f"{path}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{_where(path)}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 2.0, 1e3; not 1.5, nan, inf
            return int(value)
        raise _not_a_number(value, "an integer", path)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _not_a_number(value, "a number", path)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{_where(path)}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{_where(path)}: expected a path, got {value!r}")
    raise ConfigError(f"{_where(path)}: unsupported field type {_type_name(tp)}")


def from_dict(cls: type[T], data: Mapping[str, Any] | None, path: str = "") -> T:
    """Builds dataclass ``cls`` from nested plain data, strictly.

    Args:
        cls: a dataclass type.
        data: mapping of field names to values; ``None`` or missing keys take the defaults.
        path: dotted location of ``data`` in the whole config, used in error messages.

    Raises:
        ConfigError: on an unknown key (with a did-you-mean hint), a missing required field or a
            value of the wrong type.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = to_dict(data)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where(path)}: expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    retired = [k for k in data if k not in fields and k in getattr(cls, "RETIRED_KEYS", {})]
    for key in retired:
        prefix = f"{path}." if path else ""
        logger.warning("ignoring '%s%s': %s", prefix, key, cls.RETIRED_KEYS[key])
    unknown = [k for k in data if k not in fields and k not in retired]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        prefix = f"{path}." if path else ""
        raise ConfigError(
            f"unknown key '{prefix}{key}' for {cls.__name__}{hint} "
            f"(known keys: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key '{sub}' for {cls.__name__}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # __post_init__ validation
        raise ConfigError(f"{_where(path)}: {err}") from err


def to_dict(cfg: Any) -> Any:
    """Turns a (nested) config dataclass into plain YAML-safe data."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parses ``"a.b.c=value"`` into (["a", "b", "c"], value), the value read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r} has an empty key component")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {err}") from err
    return keys, value


def apply_overrides(data: Mapping[str, Any] | None, overrides: Iterable[str]) -> dict[str, Any]:
    """Returns a copy of nested ``data`` with each ``a.b=c`` override applied.

    Keys are not checked here; :func:`from_dict` checks them against the schema afterwards, so a
    misspelt override fails with the same did-you-mean error as a misspelt YAML key.
    """
    result: dict[str, Any] = _deep_copy(dict(data or {}))
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"override {text!r}: '{'.'.join(keys[: i + 1])}' is a value, not a section"
                )
            node = child
        node[keys[-1]] = value
    return result


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _merge(base: Any, override: Any) -> Any:
    """``override`` on top of ``base``: mappings merge key by key, anything else replaces."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


def _resolve_bases(data: Any, path: Path, chain: tuple[Path, ...]) -> Any:
    if isinstance(data, list):
        return [_resolve_bases(item, path, chain) for item in data]
    if not isinstance(data, Mapping):
        return data
    own = {k: _resolve_bases(v, path, chain) for k, v in data.items() if k != BASE_KEY}
    if BASE_KEY not in data:
        return own
    bases = data[BASE_KEY]
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(
            f"{path}: {BASE_KEY} must be a file name or a list of them, got {bases!r}"
        )
    merged: Any = {}
    for base in bases:
        merged = _merge(merged, read_yaml(path.parent / base, chain))
    return _merge(merged, own)


def read_yaml(path: str | Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of a YAML file with its ``_base_`` files merged in (see the module doc).

    Raises:
        ConfigError: naming the file that is invalid YAML, not a mapping, or extends itself.
        FileNotFoundError: naming a missing file (a base names the file that wanted it).
    """
    path = Path(path)
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: {BASE_KEY} files extend each other: {cycle}")
    if not path.is_file():
        wanted = f" (the {BASE_KEY} of {chain[-1]})" if chain else ""
        raise FileNotFoundError(f"{path}: no such file{wanted}")
    try:
        data = _load_yaml(read_text(path)) or {}
    except ValueError as err:  # not UTF-8
        raise ConfigError(str(err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return _resolve_bases(data, path, (*chain, resolved))


def config_path_hint(key: str, path: str | Path) -> str:
    """For a config field ``key`` whose path ``path`` is not found: a relative path of a config
    is read from the directory the command runs in, so this names that directory and says to
    run from the one the config's paths are relative to (:func:`asr.fileio.relative_path_hint`;
    ``""`` for an absolute path or a directory that is there). Every check of a config's path
    appends it to its "does not exist"."""
    return relative_path_hint(path, f"in {key}", "the directory the config's paths are relative "
                              "to (a recipe's --work-dir), or give an absolute path")


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()
) -> T:
    """Loads dataclass ``cls`` from a YAML file (or defaults) plus ``--set`` style overrides.

    Raises:
        ConfigError: naming the key on any schema violation, and where it is: the file, or
            ``the --set overrides`` when the file loads without them.
        FileNotFoundError: when ``path`` (or a file it extends) does not exist.
    """
    data: Any = read_yaml(path) if path is not None else {}
    overrides = list(overrides)
    try:
        return from_dict(cls, apply_overrides(data, overrides))
    except ConfigError as err:
        raise ConfigError(f"{_source_of_error(cls, data, path, overrides)}{err}") from err


def _source_of_error(cls: type, data: Any, path: str | Path | None, overrides: list[str]) -> str:
    """The prefix of a config error: the file's name, unless there is no file or it loads
    without the overrides, which then made the error (a misspelt ``--set`` key is not in the
    file)."""
    if not overrides:
        return f"{path}: " if path is not None else ""
    if path is None:
        return "the --set overrides: "
    try:
        from_dict(cls, data)
    except ConfigError:
        return f"{path}: "
    return f"the --set overrides (on {path}): "


def save_config(cfg: Any, path: str | Path) -> None:
    """Writes the resolved config as YAML (atomically: :func:`asr.fileio.write_text_atomic`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
