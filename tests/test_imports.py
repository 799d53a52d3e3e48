"""The import graph: every module of gazegen (train, pipelines and evaluation included) imports, the graph has
no loop, and no arrow runs against the layout's direction.

The graph is read from the source with ast, every import counted (module level, inside functions
and under TYPE_CHECKING alike): an edge A -> B when module A names module B or a name defined in
B. A cycle fails the test and is named; so is an arrow against LAYERS.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest


PACKAGES = ("gazegen", "gazegen.train", "gazegen.pipelines", "gazegen.evaluation")

# The layout's direction (docs/design.md): config <- geometry <- rendering <- models <- (train, pipelines)
# <- evaluation <- cli. A module may import its own part and parts of a lower rank, never an equal or higher
# one (so train/ and pipelines/ never import each other).
LAYERS = {"errors": 0, "allocator": 0, "settings_diff": 0, "config": 1, "weights": 1, "device": 1, "paths": 1, "geometry": 2, "imaging": 2, "rendering": 3, "data": 4, "models": 4, "metrics": 4,
          "checkpoint": 5, "live3d": 6, "benchmark": 7, "train": 7, "pipelines": 7, "evaluation": 8, "cli": 9}


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


def part(module: str) -> str:
    """The layout part of a module: gazegen.train.data -> train, gazegen.geometry -> geometry."""
    return module.split(".")[1] if "." in module else module


def against_layers(graph: dict[str, set[str]]) -> list[str]:
    """Every arrow A -> B between two parts where B's rank is not below A's ("gazegen" itself is no part)."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if b != "gazegen" and part(a) != part(b) and LAYERS[part(b)] >= LAYERS[part(a)])


def test_against_layers_closed_forms():
    graph = {"gazegen.models.x": {"gazegen.config.y", "gazegen.rendering.z"}, "gazegen.train.t": {"gazegen.pipelines.p"},
             "gazegen.geometry": {"gazegen.models.x"}, "gazegen.cli": {"gazegen", "gazegen.evaluation.e"}}
    assert against_layers(graph) == ["gazegen.geometry -> gazegen.models.x", "gazegen.train.t -> gazegen.pipelines.p"]


def test_the_import_graph_has_no_cycle_and_follows_the_layers():
    modules = all_modules()
    graph = import_graph(modules)
    assert {"gazegen.train.data", "gazegen.train.depth_prior", "gazegen.evaluation.report"} <= set(graph)
    assert {part(m) for m in modules if m != "gazegen"} <= set(LAYERS), "a new part of the layout needs a rank in LAYERS"
    cycle = find_cycle({m: targets - {"gazegen"} for m, targets in graph.items()})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    assert against_layers(graph) == []


def test_the_design_map_names_every_module():
    """docs/design.md is the repository's map: a module it does not name (by file or module name) is one a reader
    of the map cannot find."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    unnamed = sorted(name for name in all_modules() if not name.endswith("__init__") and name.count(".") >= 1
                     and not re.search(rf"\b{re.escape(name.rsplit('.', 1)[1])}\b", text))
    assert unnamed == [], "modules docs/design.md does not name: " + ", ".join(unnamed)
