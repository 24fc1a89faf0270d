"""Layers point down: no import cycle in structsearch, and the leaves stay leaves.

Every ``import`` is read with :mod:`ast` -- module-level and inside functions alike, since a
deferred import is still a dependency. Two graphs must be acyclic: the packages (``structsearch.X``
for a subpackage or a top-level module) and, finer, the modules themselves (a package's
``__init__`` counts as the package).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "structsearch"

#: Modules every layer may import: they import nothing else from structsearch.
LEAVES = ("structsearch.errors", "structsearch.paths", "structsearch.pruning")


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _package(module: str) -> str:
    """``structsearch.search.results`` -> ``structsearch.search``; ``structsearch.errors`` stays."""
    return ".".join(module.split(".")[:2])


def _imports(path: Path) -> set[str]:
    """The structsearch modules ``path`` imports, wherever the import statement is."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            for alias in node.names:  # `from pkg import submodule` needs the submodule, not all of pkg
                found.add(sub if (sub := f"{module}.{alias.name}") in MODULES else module)
    return found & MODULES.keys()


def dependency_graph(unit: Callable[[str], str]) -> dict[str, set[str]]:
    """Unit -> the other units it imports, for ``unit`` mapping a module to its node."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        deps = graph.setdefault(unit(name), set())
        deps.update(unit(m) for m in _imports(path))
        deps.discard(unit(name))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read_from_every_kind_of_import() -> None:
    packages = dependency_graph(_package)
    assert "structsearch.surgery" in packages["structsearch.search"]  # module-level
    assert "structsearch.distill" in packages["structsearch.search"]  # inside a function (build_context)
    modules = dependency_graph(str)
    assert "structsearch.data.sources" in modules["structsearch.data.loading"]  # from package import module
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("unit", [_package, str], ids=["packages", "modules"])
def test_no_import_cycles(unit: Callable[[str], str]) -> None:
    cycle = find_cycle(dependency_graph(unit))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_nothing_else_from_structsearch(leaf: str) -> None:
    assert dependency_graph(_package)[leaf] == set()
