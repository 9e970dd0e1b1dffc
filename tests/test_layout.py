"""The package layout: imports point down the stages, modules stay small, packages say what
they own. An AST scan of every import (function-level ones too), not a grep of strings.
"""

import ast
from pathlib import Path

import pytest

import engine

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450
#: Modules every stage may import (they import nothing from engine but one another).
SHARED = ("engine.errors", "engine.cli", "engine.jsonfile", "engine.configs", "engine.settings")


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, name: str, *, top_level_only: bool = False) -> list[tuple[int, str]]:
    """Absolute names of the modules ``path`` imports, with line numbers."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _stage(module: str) -> int | None:
    """Index of an ``engine`` module's stage in :data:`engine.STAGES` (None outside one)."""
    parts = module.split(".")
    if parts[0] != "engine" or len(parts) < 2 or parts[1] not in engine.STAGES:
        return None
    return engine.STAGES.index(parts[1])


ALL = _modules("engine") | _modules("archs")


def test_every_stage_is_a_package():
    for stage in engine.STAGES:
        assert f"engine.{stage}" in ALL, f"engine/{stage}/__init__.py is missing"
    flat = {n for n in ALL if n.count(".") == 1 and n.startswith("engine.")}
    allowed = {f"engine.{s}" for s in engine.STAGES} | set(SHARED)
    assert flat <= allowed, f"modules outside a stage: {sorted(flat - allowed)}"


@pytest.mark.parametrize("name", sorted(ALL))
def test_imports_point_down_the_stages(name):
    path = ALL[name]
    own = _stage(name)
    for line, module in _imports(path, name):
        where = f"{path.relative_to(ROOT)}:{line} imports {module}"
        assert module.split(".")[0] != "launch", f"{where}: nothing imports launch/"
        if name in SHARED:
            shared = any(module == m or module.startswith(m + ".") for m in SHARED)
            leaf = module.split(".")[0] != "engine" or shared
            assert leaf, f"{where}: a shared module stays a leaf"
            continue
        if name.startswith("archs"):
            assert _stage(module) is None and module != "engine", f"{where}: archs is below engine"
            continue
        target = _stage(module)
        if target is not None and own is not None:
            assert target <= own, (
                f"{where}: stage {engine.STAGES[own]!r} may not import the later stage "
                f"{engine.STAGES[target]!r} (order: {' -> '.join(engine.STAGES)})"
            )


def test_the_scan_sees_an_upward_import(tmp_path):
    """The check above would catch a data module importing training (a relative one too)."""
    bad = tmp_path / "loader.py"
    bad.write_text("def f():\n    from ...train.loop import train\n")
    (module,) = {m for _, m in _imports(bad, "engine.data.shards.loader")} - {
        "engine.train.loop.train"
    }
    assert module == "engine.train.loop"
    assert _stage(module) > _stage("engine.data.shards.loader")


def test_no_import_cycles():
    graph = {
        name: {m for _, m in _imports(path, name) if m in ALL and m != name}
        for name, path in ALL.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt) :] if nxt in trail else trail
                raise AssertionError(f"import cycle: {' -> '.join(cycle + [node, nxt])}")
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


@pytest.mark.parametrize("name", sorted(ALL))
def test_modules_stay_small(name):
    lines = len(ALL[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{ALL[name].relative_to(ROOT)} has {lines} lines (> {MAX_LINES})"


@pytest.mark.parametrize("name", sorted(n for n, p in ALL.items() if p.name == "__init__.py"))
def test_packages_say_what_they_own(name):
    doc = ast.get_docstring(ast.parse(ALL[name].read_text()))
    assert doc and len(doc.split()) >= 15, f"{name} needs a docstring saying what it owns"


MAX_FUNCTION_LINES = 80
#: Folders whose functions are held to MAX_FUNCTION_LINES (issue #23).
FUNCTION_ROOTS = ("engine", "launch", "archs")


def _long_functions(path: Path, limit: int) -> list[str]:
    """``file:line name is N lines`` for each function of ``path`` longer than ``limit``."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1  # from `def` to the last line
            if length > limit:
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                found.append(f"{where}:{node.lineno} {node.name} is {length} lines (> {limit})")
    return found


def test_functions_stay_short():
    offenders = []
    for root in FUNCTION_ROOTS:
        for path in sorted((ROOT / root).rglob("*.py")):
            offenders += _long_functions(path, MAX_FUNCTION_LINES)
    assert not offenders, "functions longer than a screen (split them):\n" + "\n".join(offenders)


def test_the_function_scan_sees_a_long_method(tmp_path):
    """A method of MAX + 1 lines (``def`` included) is named; one of MAX lines is not."""

    def method(name: str, lines: int) -> str:
        return f"    def {name}(self):\n" + "".join(f"        x = {i}\n" for i in range(lines - 1))

    source = tmp_path / "long.py"
    limit = MAX_FUNCTION_LINES
    source.write_text("class A:\n" + method("fits", limit) + method("too_long", limit + 1))
    assert _long_functions(source, limit) == [
        f"{source}:{limit + 2} too_long is {limit + 1} lines (> {limit})"
    ]


#: Inside the data stage: each sub-package imports only those before it (synthetic: sources).
DATA_ORDER = ("processes", "sources", "shards", "build")


@pytest.mark.parametrize("name", sorted(n for n in ALL if n.startswith("engine.data.")))
def test_data_subpackages_import_one_way(name):
    parts = name.split(".")
    own = parts[2]
    allowed = {"synthetic": {"synthetic", "sources", "processes"}}.get(
        own, set(DATA_ORDER[: DATA_ORDER.index(own) + 1]) if own in DATA_ORDER else set()
    )
    for line, module in _imports(ALL[name], name):
        target = module.split(".")
        if target[:2] == ["engine", "data"] and len(target) > 2:
            where = f"{ALL[name].relative_to(ROOT)}:{line} imports {module}"
            assert target[2] in allowed, f"{where}: engine.data.{own} may import {sorted(allowed)}"
