"""Retry timing for a connection, logging once when it goes down and once when it is back."""

from __future__ import annotations

import logging

from bgjobs.core.errors import first_line

log = logging.getLogger(__name__)

MAX_BACKOFF = 10.0


class Backoff:
    def __init__(self, what: str) -> None:
        self.what = what  # e.g. "LISTEN connection": "... lost: why" / "... restored after 2.0s"
        self.down_since: float | None = None
        self.delay = 0.0
        self.retry_at = 0.0
        self.max_delay = MAX_BACKOFF

    def ready(self, now: float) -> bool:
        return now >= self.retry_at

    def failed(self, exc: BaseException, now: float) -> None:
        if self.down_since is None:
            self.down_since = now
            log.warning("%s lost: %s; reconnecting with backoff", self.what, first_line(exc))
        self.delay = min(self.max_delay, self.delay * 2 or 0.25)
        self.retry_at = now + self.delay

    def cap(self, seconds: float, now: float) -> None:
        """Retry at least every ``seconds`` from now on (a deadline is near)."""
        self.max_delay = seconds
        self.delay = min(self.delay, seconds)
        self.retry_at = min(self.retry_at, now + seconds)

    def ok(self, now: float) -> None:
        if self.down_since is not None:
            log.info("%s restored after %.1fs", self.what, now - self.down_since)
        self.down_since, self.delay, self.retry_at = None, 0.0, 0.0
