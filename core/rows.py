"""Reading rows whatever they hold: a stored value bgjobs cannot represent never fails a read.

The tables refuse such values when written (012_readable_times.sql), but a row can predate
that, or be restored from elsewhere: a time outside Python's datetime (``infinity``, year
10000), JSON whose numbers Python cannot hold (1e400, an integer of thousands of digits) or
nested deeper than it can parse. Every bgjobs connection reads timestamps and JSON through
the loaders here (``lenient``): such a value is loaded as an ``Unreadable`` marker, and the row
factories turn it into None, note it on the job (``Job.unreadable``) and log the job's id, so
one bad row never takes down a whole list, a claim or a stream.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

# psycopg types row factories with BaseCursor, re-exported by psycopg.cursor from a private
# module without __all__, which pyright reads as a private import (the ignore below).
import psycopg
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Loader
from psycopg.cursor import BaseCursor  # pyright: ignore[reportPrivateImportUsage]
from psycopg.postgres import types as pg_types
from psycopg.pq import Format
from psycopg.rows import BaseRowFactory, RowMaker
from psycopg.types.json import set_json_loads

from bgjobs.core.jobs import JOB_COLUMNS, TIME_RANGE, Job

log = logging.getLogger(__name__)

T = TypeVar("T")

_TIMESTAMPTZ = pg_types["timestamptz"].oid
_STRICT_TIMESTAMPTZ = psycopg.adapters.get_loader(_TIMESTAMPTZ, Format.TEXT)
_SHOWN = 80  # characters of an unreadable value kept for the log


class Unreadable(str):
    """A stored value bgjobs cannot represent, as Postgres printed it (cut short)."""


class LenientTimestamptzLoader(Loader):
    """psycopg's own timestamptz loader, but a time it cannot hold loads as Unreadable."""

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        assert _STRICT_TIMESTAMPTZ is not None
        self._load = _STRICT_TIMESTAMPTZ(oid, context).load

    def load(self, data: Buffer) -> Any:
        try:
            return self._load(data)
        except psycopg.DataError:
            return Unreadable(bytes(data).decode("utf-8", "replace")[:_SHOWN])


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def lenient_json_loads(data: str | bytes) -> Any:
    """json.loads, but JSON Python cannot hold (or the API could not send) loads as Unreadable."""
    try:
        return json.loads(data, parse_float=_finite)
    except (ValueError, RecursionError):
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return Unreadable(text[:_SHOWN])


def lenient(context: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]
            | psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> None:
    """Read timestamps and JSON through the lenient loaders on this connection or cursor."""
    if context.adapters.get_loader(_TIMESTAMPTZ, Format.TEXT) is LenientTimestamptzLoader:
        return  # a pooled connection lent again
    context.adapters.register_loader(_TIMESTAMPTZ, LenientTimestamptzLoader)
    set_json_loads(lenient_json_loads, context)


def _split(names: Sequence[str], values: Sequence[Any]) -> tuple[dict[str, Any], dict[str, str]]:
    row, bad = {}, {}
    for name, value in zip(names, values, strict=True):
        if isinstance(value, Unreadable):
            bad[name] = str(value)
            value = None
        row[name] = value
    return row, bad


def _warn(what: str, bad: dict[str, str]) -> None:
    log.warning("%s: stored value(s) bgjobs cannot read, shown as null: %s (times must be %s; "
                "see docs/dba.md, 'Values bgjobs cannot read')", what,
                ", ".join(f"{k}={v!r}" for k, v in bad.items()), TIME_RANGE)


def job_row(cursor: BaseCursor[Any, Any]) -> RowMaker[Job]:
    """Like ``class_row(Job)``: unreadable values are None, named in ``Job.unreadable``; columns
    this version of bgjobs does not know are left out (a migration adding one runs before the
    code that reads it is deployed, and the code still running must read on)."""
    names = [c.name for c in cursor.description or ()]
    keep = [i for i, name in enumerate(names) if name in JOB_COLUMNS]
    if len(keep) < len(names):
        names = [names[i] for i in keep]
    else:
        keep = []

    def make(values: Sequence[Any]) -> Job:
        if keep:
            values = [values[i] for i in keep]
        row, bad = _split(names, values)
        if bad:
            _warn(f"job {row.get('id')}", bad)
            row["unreadable"] = tuple(bad.items())
        return Job(**row)

    return make


def record_row(cls: Callable[..., T]) -> BaseRowFactory[T]:
    """Like ``class_row(cls)``: unreadable values are None (and logged)."""

    def factory(cursor: BaseCursor[Any, Any]) -> RowMaker[T]:
        names = [c.name for c in cursor.description or ()]

        def make(values: Sequence[Any]) -> T:
            row, bad = _split(names, values)
            if bad:
                _warn(f"{getattr(cls, '__name__', 'row')} {row.get('id') or row.get('name')}",
                      bad)
            return cls(**row)

        return make

    return factory


def dict_rows(cursor: BaseCursor[Any, Any]) -> RowMaker[dict[str, Any]]:
    """Like ``dict_row``: unreadable values are None (and logged)."""
    names = [c.name for c in cursor.description or ()]

    def make(values: Sequence[Any]) -> dict[str, Any]:
        row, bad = _split(names, values)
        if bad:
            _warn(f"row {row.get('id') or row.get('worker_id') or row.get('name') or ''}", bad)
        return row

    return make
