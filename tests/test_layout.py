"""The shape of the code, checked: small modules and functions, imports that point one way
(errors, atomic <- data <- core's layers <- config <- core's loop <- store <- run <- cli, and
report beside run: it reads the store and never trains), and no import cycles, including those
a function-level import would hide."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "normlab"
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60

# What each layer may never import (prefixes of module names). config sits between core's
# layers (norms, models, augment), whose names it validates, and core's loop, which runs it.
ABOVE_CONFIG = ("normlab.config", "normlab.variants", "normlab.validation", "normlab.studyfile")
FORBIDDEN = {
    "normlab.errors": ("normlab.",),
    "normlab.atomic": ("normlab.core", "normlab.data", "normlab.store", "normlab.config"),
    "normlab.data": ("normlab.core", "normlab.run", "normlab.store", "normlab.report"),
    "normlab.core.norms": ABOVE_CONFIG,
    "normlab.core.models": ABOVE_CONFIG,
    "normlab.core.augment": ABOVE_CONFIG,
    "normlab.core.device": ABOVE_CONFIG,
    "normlab.core.records": ABOVE_CONFIG,
    "normlab.core": ("normlab.run", "normlab.report", "normlab.cli", "normlab.store"),
    "normlab.config": ("normlab.core.train", "normlab.run", "normlab.store", "normlab.report"),
    "normlab.store": ("normlab.core.train", "normlab.run", "normlab.report", "normlab.cli"),
    "normlab.run": ("normlab.report", "normlab.cli"),
    "normlab.report": ("normlab.core.train", "normlab.run", "normlab.cli", *ABOVE_CONFIG),
}
# Reading a study folder (`normlab report`) needs none of training, configuration or data.
READ_MODEL = "normlab.store.reader"
NOT_FOR_READING = ("normlab.core.train", "normlab.config", "normlab.data", "normlab.run")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path) -> set[str]:
    """The normlab modules a file imports anywhere (functions included), except under
    `if TYPE_CHECKING:`, which never runs."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("normlab"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("normlab"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in MODULES}


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_point_down(layer: str) -> None:
    for name, deps in GRAPH.items():
        if name == layer or name.startswith(layer + "."):
            bad = sorted(d for d in deps if d.startswith(FORBIDDEN[layer]))
            assert not bad, f"{name} imports {bad}, above its layer"


def test_reading_a_study_imports_no_training() -> None:
    seen, todo = set(), [READ_MODEL]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += GRAPH[name]
    assert not sorted(m for m in seen if m.startswith(NOT_FOR_READING))


def test_modules_are_small() -> None:
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert not {n: k for n, k in long.items() if k > MAX_MODULE_LINES}


def test_functions_are_short() -> None:
    long = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{name}.{node.name}"] = lines
    assert not long
