"""The library is generic (issue 15): it ships only its own small types, and the seed's app
(examples/seed_app/backend) is built on the public API alone, like any host app."""

from __future__ import annotations

import ast
from pathlib import Path

from bgjobs.tasks import registry

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = {"bgjobs", "bgjobs.flask"}


def test_the_built_in_types_are_noop_and_demo() -> None:
    builtin = {name for name, task in registry.load_tasks().items()
               if task.handler.__module__.startswith("bgjobs.tasks.builtin.")}
    assert builtin == {"demo", "noop"}


def test_the_seed_app_imports_only_the_public_api() -> None:
    used = {}
    for path in sorted((ROOT / "examples" / "seed_app" / "backend").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.split(".")[0] == "bgjobs":
                    used.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert used and set(used) <= PUBLIC, {k: v for k, v in used.items() if k not in PUBLIC}
