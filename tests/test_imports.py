"""The import graph: every module of gazegen, gazegen.train and gazegen.pipelines imports, and train/ has no loop.

The graph is read from the source with ast, every import counted (module level, inside functions
and under TYPE_CHECKING alike): an edge A -> B when module A names module B or a name defined in
B. A cycle among the modules of train/ fails the test and is named.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import gazegen

PACKAGES = ("gazegen", "gazegen.train", "gazegen.pipelines")


def all_modules() -> dict[str, Path]:
    """Module name -> source file, for gazegen and its subpackages. gazegen.train and gazegen.pipelines are
    walked from their own __path__: they are mapped from top-level folders (pyproject's package-dir), so
    gazegen's folder does not hold them."""
    found = {}
    for package in PACKAGES:
        root = importlib.import_module(package)
        found[package] = Path(root.__file__)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            found[info.name] = Path(importlib.util.find_spec(info.name).origin)
    return found


def imported_names(name: str, path: Path) -> set[str]:
    """Absolute dotted names ``path`` imports: ``import a.b`` -> a.b; ``from a import b`` -> a and a.b."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ``modules`` it imports (a name inside a module counts as that module)."""
    return {name: {n for n in imported_names(name, path) if n in modules and n != name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search, colours white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_find_cycle_closed_forms():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_imported_names_resolve_relative_and_nested_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\nfrom . import sibling\nfrom .x import y\n"
                      "def f():\n    from gazegen.train.data import Triplets\n")
    names = imported_names("gazegen.train.m", source)
    assert {"os", "gazegen.train", "gazegen.train.sibling", "gazegen.train.x", "gazegen.train.x.y",
            "gazegen.train.data", "gazegen.train.data.Triplets"} <= names


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_imports(package):
    inside = lambda m, p: m == p or m.startswith(p + ".")  # noqa: E731
    others = [p for p in PACKAGES if p != package and inside(p, package)]  # gazegen: not its train/ and pipelines/
    modules = [m for m in all_modules() if inside(m, package) and not any(inside(m, o) for o in others)]
    assert len(modules) > 1
    for name in modules:
        importlib.import_module(name)


def test_train_has_no_import_cycle():
    modules = all_modules()
    graph = import_graph(modules)
    train = {m: {n for n in graph[m] if n.startswith("gazegen.train.")} for m in graph if m.startswith("gazegen.train.")}
    assert "gazegen.train.data" in train and "gazegen.train.depth_prior" in train
    cycle = find_cycle(train)
    assert cycle is None, "import cycle in train/: " + " -> ".join(cycle)
