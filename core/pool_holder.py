"""A process's own pool, and the Store over it: made on first use, made anew in a forked child,
closed at exit. The public API, the Flask extension, the API and the CLI each hold theirs here.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable
from types import TracebackType

from bgjobs.core.db import Pool
from bgjobs.core.store import Store

log = logging.getLogger(__name__)

#: How long closing a pool at exit waits for its background threads.
EXIT_CLOSE_SECONDS = 1.0


class PoolHolder:
    """A Store over a pool this process opens on first use (``store()``).

    A pool inherited across fork shares its parent's sockets, so a child opens its own. Threads
    that arrive together on first use wait for one pool: a second pool opened beside it would
    be closed while a request borrows from the first. Also a context manager: ``with`` closes it.
    """

    def __init__(self, open_pool: Callable[[], Pool]) -> None:
        self._open = open_pool
        self._lock = threading.Lock()
        self._current: tuple[int, Store, Pool] | None = None

    def store(self) -> Store:
        """This process's Store, its pool opened now if it has none yet."""
        current = self._current
        if current is not None and current[0] == os.getpid():
            return current[1]
        with self._lock:
            current = self._current
            if current is None or current[0] != os.getpid():  # none yet, or its parent's
                pool = self._open()
                current = self._current = (os.getpid(), Store(pool), pool)
                _open_holders.add(self)
            return current[1]

    def replace(self, open_pool: Callable[[], Pool]) -> Store:
        """Open pools with ``open_pool`` from now on, starting now; the pool replaced is closed,
        so calls still using it fail."""
        with self._lock:
            previous = self._current
            self._open = open_pool
            pool = open_pool()
            current = self._current = (os.getpid(), Store(pool), pool)
            _open_holders.add(self)
        _close(previous)
        return current[1]

    def close(self, timeout: float = 5.0) -> None:
        """Close this process's pool (a later ``store()`` opens another); a parent's is left."""
        with self._lock:
            current, self._current = self._current, None
            _open_holders.discard(self)
        _close(current, timeout)

    def __enter__(self) -> Store:
        return self.store()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _close(held: tuple[int, Store, Pool] | None, timeout: float = 5.0) -> None:
    if held is not None and held[0] == os.getpid():  # a parent's pool is not ours to close
        held[2].close(timeout)


#: The holders with a pool open, closed at exit (held here: a caller may keep only the Store).
_open_holders: set[PoolHolder] = set()


@atexit.register
def _close_all() -> None:
    for holder in list(_open_holders):
        try:
            holder.close(EXIT_CLOSE_SECONDS)
        except Exception:  # noqa: BLE001 - at exit: log, and close the others
            log.exception("closing a pool at exit")
