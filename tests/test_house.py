"""The house's rooms and one-way doors (DESIGN.md, "The house"), read from the source itself.

``models`` imports nothing of ``api`` or ``worker``; ``api`` imports nothing of ``worker`` except
in the ``actq`` command (``api/cli/``), the one composition root, and only inside its functions;
``worker.engine`` is a library that knows no database, queue or web server; and no module grows
past the size at which it holds more than one idea.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("models", "api", "worker")
MAX_LINES = 400


def _modules(room: str) -> list[Path]:
    return sorted(p for p in (REPO / room).rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Absolute module names imported by ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _offenders(room: str, forbidden: tuple[str, ...], top_level_only=False, skip=()) -> list:
    found = []
    for path in _modules(room):
        rel = path.relative_to(REPO).as_posix()
        if any(rel.startswith(s) for s in skip):
            continue
        for name in _imports(path, top_level_only):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append((rel, name))
    return found


def test_models_import_neither_api_nor_worker_nor_heavy_frameworks():
    assert _offenders("models", ("api", "worker", "torch", "flask", "celery")) == []


def test_api_reaches_into_worker_only_inside_the_cli_commands():
    assert _offenders("api", ("worker", "torch"), skip=("api/cli/",)) == []
    assert _offenders("api", ("worker", "torch"), top_level_only=True) == []


def test_the_engine_knows_no_database_queue_or_web_server():
    forbidden = ("api", "models.store", "models.settings", "sqlalchemy", "celery", "flask", "redis")
    assert _offenders("worker/engine", forbidden) == []


def test_the_worker_never_imports_the_web_app():
    assert _offenders("worker", ("api", "flask")) == []


@pytest.mark.parametrize("room", ROOMS)
def test_no_module_is_over_400_lines(room):
    long = {
        p.relative_to(REPO).as_posix(): n
        for p in _modules(room)
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
