"""The package's import graph flows one way: no package of trading_ops imports one that imports it back (directly or
round a longer loop), and no module one that imports it back, so each can be read, tested and changed from the bottom
up."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "trading_ops"


def unit_of(module: str) -> str:
    """The part of trading_ops a module belongs to: its subpackage (`ops`, `reconciler`, ...) or, for a module at the
    top (`config`, `cron`, `cli`), the module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports() -> dict[str, set[str]]:
    """Unit -> the other units it imports (at the top or inside a function: either runs)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        source = unit_of(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("trading_ops.") and (target := unit_of(name)) != source:
                    graph.setdefault(source, set()).add(target)
    return graph


def module_imports() -> dict[str, set[str]]:
    """Module -> the other modules of trading_ops it imports, at any depth of its code (a function's import runs too).
    An import of a package's face (its __init__, which only hands names on) is not an arrow to the modules behind it;
    `from package import module` is one to that module."""
    files = {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for path in PACKAGE.rglob("*.py")
        if "migrations" not in path.parts
    }
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - (node.level - 1)] + ([base] if base else []))
                targets |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        graph[module] = {t for t in targets if t in files and t != module and files[t].name != "__init__.py"}
    return graph


def cycles(graph: Mapping[str, set[str]]) -> Iterator[list[str]]:
    """Each loop of the graph once, as the units round it (Tarjan's strongly connected components of size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(unit: str) -> Iterator[list[str]]:
        index[unit] = low[unit] = len(index)
        stack.append(unit)
        for other in sorted(graph.get(unit, ())):
            if other not in index:
                yield from visit(other)
                low[unit] = min(low[unit], low[other])
            elif other in stack:
                low[unit] = min(low[unit], index[other])
        if low[unit] == index[unit]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == unit:
                    break
            if len(component) > 1:
                yield sorted(component)

    for unit in sorted(graph):
        if unit not in index:
            yield from visit(unit)


def test_no_package_imports_one_that_imports_it_back() -> None:
    graph = imports()
    assert {"ops", "reconciler", "bot", "config"} <= set(graph) | {u for v in graph.values() for u in v}
    assert list(cycles(graph)) == []


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = module_imports()
    assert {"trading_ops.venues.ccxt.factory", "trading_ops.venues.ccxt.rest"} <= set(graph)
    assert "trading_ops.venues.ccxt.rest" in graph["trading_ops.venues.ccxt.factory"]
    assert list(cycles(graph)) == []


def test_the_check_finds_a_loop_direct_or_round_three_packages() -> None:
    assert list(cycles({"ops": {"reconciler"}, "reconciler": {"ops"}})) == [["ops", "reconciler"]]
    assert list(cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})) == [["a", "b", "c"]]
    assert list(cycles({"a": {"b"}, "b": {"c"}})) == []
