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
    "bgjobs": {"core", "tasks", "server", "worker", "cli", "flask", "aio", "asgi", ""},
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


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] == "bgjobs" else ["bgjobs", *parts])


def runtime_imports(path: Path) -> set[str]:
    """The bgjobs modules a file imports when it runs (``if TYPE_CHECKING:`` blocks left out),
    at module level or inside a function alike."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def test_no_module_imports_itself_round_a_loop():
    # enqueue -> registry -> schedules -> enqueue was one (issue 15): each module of a loop
    # works only if the others happen to be imported first.
    modules = {module_name(p): p for p in sources()}
    graph = {name: runtime_imports(path) & set(modules) - {name}
             for name, path in modules.items()}
    loops = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name == start:
                loops.append(start)
                break
            if name not in seen:
                seen.add(name)
                todo.extend(graph[name])
    assert not loops, f"modules on an import loop: {sorted(loops)}"


def test_the_public_names_and_what_type_checkers_see_agree():
    # bgjobs/__init__.py loads its names on first use (_EXPORTS); type checkers read the
    # TYPE_CHECKING imports instead. A name added to one and not the other would be a name
    # that works but does not type-check, or type-checks but does not work.
    import bgjobs

    tree = ast.parse((ROOT / "bgjobs" / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and getattr(node.test, "id", None) == "TYPE_CHECKING")
    seen = {alias.asname or alias.name: node.module for node in block.body
            if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert seen == bgjobs._EXPORTS
    assert bgjobs.__all__ == sorted(bgjobs._EXPORTS)


def casts_to_any(path: Path) -> list[int]:
    """Lines of ``cast(Any, ...)`` (or ``typing.cast``, or the type as a string) in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func, kind = node.func, node.args[0]
        named_cast = (isinstance(func, ast.Name) and func.id == "cast") or (
            isinstance(func, ast.Attribute) and func.attr == "cast")
        to_any = (isinstance(kind, ast.Name) and kind.id == "Any") or (
            isinstance(kind, ast.Attribute) and kind.attr == "Any") or (
            isinstance(kind, ast.Constant) and kind.value == "Any")
        if named_cast and to_any:
            found.append(node.lineno)
    return found


@pytest.mark.parametrize("layer", ["core", "worker", "tasks"])
def test_no_cast_to_any_in_the_lower_layers(layer: str):
    # The store takes a ConnectionSource (core/connections.py) that a pool and the worker's one
    # connection both are: handing it either needs no cast, nor should anything else here.
    wrong = [f"{p.relative_to(ROOT)}:{line}" for p in sorted((ROOT / layer).rglob("*.py"))
             for line in casts_to_any(p)]
    assert not wrong, f"cast(Any, ...) at {wrong}"


def test_the_cast_rule_sees_a_cast(tmp_path: Path):
    sample = tmp_path / "sample.py"
    sample.write_text("from typing import Any, cast\nimport typing\n"
                      "a = cast(Any, 1)\nb = typing.cast('Any', 2)\nc = cast(int, 3)\n")
    assert casts_to_any(sample) == [3, 4]
