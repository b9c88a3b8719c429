#!/usr/bin/env python3
"""The import rules of ``asr/`` (docs/ARCHITECTURE.md), checked from the code's own imports.

1. **Layers**: every module belongs to one layer of :data:`LAYERS` (longest matching prefix); an
   import may point to its own layer or a lower one, never to a higher one.
2. **No cycles**: the module graph (imports inside functions and ``TYPE_CHECKING`` blocks
   included) has no strongly connected component of more than one module.
3. **Imports at the top**: a project import inside a function is allowed only for the optional
   backends of :data:`LAZY_ALLOWED` (today the modules that need Triton).

The package's face, ``asr/__init__.py``, is the one declared exception (:data:`FACADE`): it
re-exports the runtime lazily so that ``import asr`` stays cheap, and it is not checked.

Usage::

    python tools/check_imports.py [ROOT]     # prints the violations; exit status 1 if any

Only the standard library is used, so the check runs before anything is installed.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: Layers from the ground up; each a name and the module prefixes it holds.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("asr.version", "asr.fileio", "asr.config", "asr.types", "asr.state",
                    "asr.audio", "asr.metrics", "asr.tokenizers", "asr.results", "asr.synth",
                    "asr.fingerprint", "asr.constants", "asr.device",
                    "asr.process_exit")),
    ("signal, losses, storage", ("asr.features", "asr.losses", "asr.checkpoints")),
    ("networks, data, training loop", ("asr.encoders", "asr.heads", "asr.data", "asr.train")),
    ("model", ("asr.model",)),
    ("decoding", ("asr.decoding",)),
    ("experiment", ("asr.experiment",)),
    ("package", ("asr.package",)),
    ("applications", ("asr.runtime", "asr.run", "asr.export")),
    ("services", ("asr.serve", "asr.testing")),
    ("command line", ("asr.cli",)),
)

#: The package's face: re-exports, not checked.
FACADE = "asr"

#: Project modules that may be imported inside functions: optional backends.
LAZY_ALLOWED: frozenset[str] = frozenset({
    "asr.losses.mutual_information_triton",  # triton
    "asr.losses.tdt_triton",  # triton
})


@dataclass(frozen=True)
class Import:
    """One project import: ``source`` imports ``target`` at ``line``; ``lazy`` when inside a
    function."""

    source: str
    target: str
    line: int
    lazy: bool


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``root/asr``."""
    names = {}
    for path in sorted((root / "asr").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def _targets(node: ast.Import | ast.ImportFrom, source: str, is_package: bool,
             modules: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = source.split(".") if is_package else source.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        # ``from pkg import mod`` imports the module; ``from mod import name`` the module
        candidates = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                      for alias in node.names]
    else:
        candidates = [alias.name for alias in node.names]
    found = set()
    for name in candidates:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != source:
            found.add(name)
    return found


def _function_nodes(tree: ast.Module) -> set[int]:
    """ids of the import nodes that sit inside a function or lambda."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(
                id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))
            )
    return inside


def project_imports(root: Path) -> list[Import]:
    """Every import between project modules (the facade's own excluded)."""
    modules = module_names(root)
    found = []
    for source, path in modules.items():
        if source == FACADE:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        inside = _function_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, source, path.name == "__init__.py", modules):
                    found.append(Import(source, target, node.lineno, id(node) in inside))
    return found


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of the longest prefix that holds ``module`` (None: none does)."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def cycles(imports: Iterable[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def violations(root: Path) -> list[str]:
    """Every broken rule, one line each (empty: the house is in order)."""
    imports = project_imports(root)
    problems = []
    for name in module_names(root):
        if name != FACADE and layer_of(name) is None:
            problems.append(f"{name}: in no layer of tools/check_imports.py LAYERS")
    for imp in imports:
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if src is not None and dst is not None and dst > src:
            problems.append(
                f"{imp.source}:{imp.line}: imports {imp.target} from a higher layer "
                f"('{LAYERS[src][0]}' -> '{LAYERS[dst][0]}')"
            )
        if imp.target == FACADE:
            problems.append(f"{imp.source}:{imp.line}: imports the facade 'asr'; import the "
                            f"module that defines the name")
        if imp.lazy and imp.target not in LAZY_ALLOWED:
            problems.append(f"{imp.source}:{imp.line}: imports {imp.target} inside a function "
                            f"(only optional backends may: {sorted(LAZY_ALLOWED)})")
    for component in cycles(imports):
        problems.append("import cycle: " + " <-> ".join(component))
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
    problems = violations(root)
    for line in problems:
        print(line)
    layers = len(LAYERS)
    modules = len(module_names(root))
    print(f"check_imports: {modules} modules in {layers} layers, {len(problems)} violation(s)",
          file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
