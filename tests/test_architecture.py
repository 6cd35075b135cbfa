"""The layout's rules, read off the source: no import cycle, ``testing`` stays a leaf, and the
LangGraph Server entry point loads only what serving a graph needs."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import moa_graph

PACKAGE = Path(moa_graph.__file__).parent


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported(path: Path, name: str, known: dict[str, Path]) -> Iterator[str]:
    """The package's modules ``path`` imports: at the top, in functions, under TYPE_CHECKING."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from package import module`` imports the module; a name imports its module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]  # fmt: skip
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import a.b.c`` where c is a name
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imported(path, name, known)) for name, path in known.items()}


def test_the_module_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "moa_graph.engine.graph" in graph and "moa_graph.settings" in graph
    state: dict[str, str] = {}  # visiting / done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = "visiting"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "visiting":
                cycle = [*stack[stack.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_cycle_check_finds_a_cycle() -> None:
    """The check above would see a cycle such as the graph's old one (graph -> steps -> graph
    under TYPE_CHECKING)."""
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from moa_graph.b import X\n"
    known = {"moa_graph.a": Path("a.py"), "moa_graph.b": Path("b.py")}
    path = PACKAGE.parent / "tests" / "data" / "_cycle_probe.py"
    path.write_text(source)
    try:
        assert list(imported(path, "moa_graph.a", known)) == ["moa_graph.b"]
    finally:
        path.unlink()


def unit(module: str) -> str:
    """The unit ``module`` belongs to: its innermost package below ``moa_graph``, or itself
    when it is a top-level module (``moa_graph.engine.plan`` -> ``moa_graph.engine``,
    ``moa_graph.strategies.vote`` -> ``moa_graph.strategies``)."""
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        candidate = PACKAGE.parent.joinpath(*parts[:end])
        if candidate.is_dir() and (candidate / "__init__.py").exists():
            return ".".join(parts[:end])
    return module


def unit_graph(graph: dict[str, set[str]]) -> dict[str, dict[str, list[str]]]:
    """Units and the imports between them: ``{unit: {imported unit: [module -> module]}}``."""
    units: dict[str, dict[str, list[str]]] = {}
    for module, targets in graph.items():
        edges = units.setdefault(unit(module), {})
        for target in targets:
            if unit(target) != unit(module):
                edges.setdefault(unit(target), []).append(f"{module} -> {target}")
    return units


def cycle_in(units: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """A cycle of units (each step with the imports that make it), or ``None``."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "visiting"
        stack.append(node)
        for target in sorted(units.get(node, {})):
            if state.get(target) == "visiting":
                ring = [*stack[stack.index(target) :], target]
                steps = itertools.pairwise(ring)
                return [f"{a} ({', '.join(units[a][b][:2])})" for a, b in steps]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(units):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_cycle_between_packages() -> None:
    """Each top-level module and each subpackage counted as one unit, imports point down
    only: what everything shares (``settings``, ``call_policy``, ``tokens``, ``backend``, the
    strategies and their registry) sits below ``models``, ``aggregator`` and ``engine``."""
    units = unit_graph(import_graph())
    assert {"moa_graph.engine", "moa_graph.strategies", "moa_graph.settings"} <= set(units)
    assert unit("moa_graph.strategies.vote") == "moa_graph.strategies"
    assert cycle_in(units) is None, "cycle between packages: " + " -> ".join(cycle_in(units) or [])
    below_models = ("moa_graph.settings", "moa_graph.call_policy", "moa_graph.tokens",
                    "moa_graph.backend", "moa_graph.strategies")  # fmt: skip
    for shared in below_models:
        assert not {"moa_graph.models", "moa_graph.aggregator", "moa_graph.engine"} & set(
            units[shared]
        ), shared


def test_the_package_cycle_check_finds_the_old_circle() -> None:
    """The circle measured before the shared leaf: settings -> engine (token counting),
    models -> engine (call policy), engine -> models and settings, aggregator -> models."""
    old = {
        "moa_graph.settings": {"moa_graph.engine.references"},
        "moa_graph.models": {"moa_graph.engine.calls", "moa_graph.settings"},
        "moa_graph.aggregator": {"moa_graph.models", "moa_graph.settings"},
        "moa_graph.engine.plan": {"moa_graph.models", "moa_graph.settings"},
        "moa_graph.engine.scope": {"moa_graph.aggregator"},
        "moa_graph.engine.references": set(),
        "moa_graph.engine.calls": set(),
    }
    ring = cycle_in(unit_graph(old))
    assert ring is not None and any(step.startswith("moa_graph.engine (") for step in ring)


def test_nothing_outside_testing_imports_testing() -> None:
    offenders = [
        name
        for name, targets in import_graph().items()
        if not name.startswith("moa_graph.testing")
        and any(target.startswith("moa_graph.testing") for target in targets)
    ]
    assert offenders == []


def test_the_strategies_and_the_settings_sit_below_the_engine_wiring() -> None:
    graph = import_graph()
    below = ("moa_graph.settings", "moa_graph.strategies")
    for module in below:
        reachable, todo = set(), [module]
        while todo:
            for target in graph[todo.pop()]:
                if target not in reachable:
                    reachable.add(target)
                    todo.append(target)
        assert not reachable & {"moa_graph.engine.graph", "moa_graph.engine.nodes",
                                "moa_graph.chat_model"}, module  # fmt: skip


def test_the_langgraph_server_entry_point_loads_neither_the_cli_nor_evaluation() -> None:
    probe = (
        "import sys, moa_graph.serve.langgraph_app as app\n"
        "assert app.graph is not None\n"
        "print(sorted(m for m in sys.modules if m.startswith(('moa_graph.cli', "
        "'moa_graph.evaluation', 'moa_graph.testing'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={"MOA_GRAPH_PRESET": "local-tiny", "PATH": "/usr/bin:/bin"},
        cwd=PACKAGE.parent,
        check=True,
    )
    assert result.stdout.strip() == "[]"
