"""The package's layers import only downward (docs/architecture.md): a test, so the picture in
the docs stays true. Reads the source of every module; imports nothing of it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
#: folder -> the bgjobs subpackages its modules may import (their own included)
ALLOWED = {
    "core": {"core"},
    "tasks": {"core", "tasks"},
    "server": {"core", "tasks", "server"},
    "worker": {"core", "tasks", "worker"},
    "bgjobs": {"core", "tasks", "server", "worker", "cli", "flask", ""},
}
#: what the checkout's folders are called once installed; nothing may import them by folder
FOLDERS = {"core", "tasks", "server", "worker", "sql"}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def sources() -> list[Path]:
    return sorted(p for folder in ALLOWED for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_import_points_down_a_layer(path: Path):
    layer = path.relative_to(ROOT).parts[0]
    wrong = []
    for line, module in imports(path):
        parts = module.split(".")
        if parts[0] in FOLDERS:
            wrong.append(f"line {line}: {module} (import bgjobs.{module}, never the folder)")
        elif parts[0] == "bgjobs":
            target = parts[1] if len(parts) > 1 else ""
            if target not in ALLOWED[layer]:
                wrong.append(f"line {line}: {layer}/ imports bgjobs.{target}")
    assert not wrong, wrong


def test_the_layer_rule_sees_the_imports_it_checks():
    # A rule that read nothing would pass anything: the API does import the lower layers.
    found = {module for _, module in imports(ROOT / "server" / "api.py")}
    assert {"bgjobs.core.store", "bgjobs.tasks"} <= found
