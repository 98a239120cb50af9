"""Load the named query blocks of sql/queries.sql (package data) into a dict."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split a file of `-- name: X` blocks into {X: sql}."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip()
    return queries


@cache
def load() -> dict[str, str]:
    """Every named query of the installed bgjobs.sql package's queries.sql."""
    return parse(files("bgjobs.sql").joinpath("queries.sql").read_text(encoding="utf-8"))


@cache
def _encoded() -> dict[str, bytes]:
    return {name: text.encode() for name, text in load().items()}


def q(name: str) -> bytes:
    """The SQL of one named query, as bytes: psycopg encodes a str query again on every run,
    and hashes the new bytes to find its parsed form (a single enqueue's statement is 400
    bytes); the same bytes object each time costs neither."""
    return _encoded()[name]
