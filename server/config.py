"""The one place that reads the environment."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = PROJECT_ROOT / "sql"


@dataclass(frozen=True)
class Config:
    database_url: str | None
    data_dir: Path
    api_bind: str
    events_bind: str
    api_workers: int
    api_threads: int
    events_workers: int
    pool_max: int
    cors_origins: tuple[str, ...]
    max_body_bytes: int
    #: Mark the session cookie Secure (BGJOBS_COOKIE_SECURE=1) when served over HTTPS.
    cookie_secure: bool = False
    #: Where browsers reach the events service (BGJOBS_EVENTS_URL): a base URL, or "/" for the
    #: API's own origin behind a proxy. None: the page's host on BGJOBS_EVENTS_BIND's port.
    events_url: str | None = None

    @property
    def embedded(self) -> bool:
        """True when no DATABASE_URL is set and bgjobs runs its own cluster."""
        return not self.database_url

    def secret_key(self) -> str:
        """BGJOBS_SECRET_KEY, or in development a key generated once and kept in the data folder."""
        key = os.environ.get("BGJOBS_SECRET_KEY")
        if key:
            return key
        path = self.data_dir / "secret_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(secrets.token_urlsafe(48))
            tmp.chmod(0o600)
            os.replace(tmp, path) if not path.exists() else tmp.unlink()
        return path.read_text().strip()


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"bgjobs: {name} must be a whole number, got {raw!r}") from None


def load() -> Config:
    """Read the configuration from the environment, with development defaults."""
    cpus = os.cpu_count() or 2
    origins = os.environ.get("BGJOBS_CORS_ORIGINS", "")
    return Config(
        database_url=os.environ.get("DATABASE_URL") or None,
        data_dir=Path(os.environ.get("BGJOBS_DATA_DIR") or PROJECT_ROOT / ".bgjobs").resolve(),
        api_bind=os.environ.get("BGJOBS_API_BIND", "127.0.0.1:8000"),
        events_bind=os.environ.get("BGJOBS_EVENTS_BIND", "127.0.0.1:8001"),
        api_workers=_int("BGJOBS_API_WORKERS", min(4, max(2, cpus))),
        api_threads=_int("BGJOBS_API_THREADS", 4),
        events_workers=_int("BGJOBS_EVENTS_WORKERS", 1),
        pool_max=_int("BGJOBS_POOL_MAX", 8),
        cors_origins=tuple(o.strip() for o in origins.split(",") if o.strip()),
        max_body_bytes=_int("BGJOBS_MAX_BODY_BYTES", 256 * 1024),
        cookie_secure=os.environ.get("BGJOBS_COOKIE_SECURE", "") not in ("", "0", "false", "no"),
        events_url=os.environ.get("BGJOBS_EVENTS_URL") or None,
    )
