"""gunicorn settings for both bgjobs services; BGJOBS_SERVICE picks which one (api or events).

`bgjobs api` and `bgjobs events` set it. The app factory runs in each worker after fork
(no preload), so every worker makes its own connection pool.
"""

import os

service = os.environ.get("BGJOBS_SERVICE", "api")


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


if service == "events":
    wsgi_app = "server.events:create_app()"
    worker_class = "asgi"
    bind = [os.environ.get("BGJOBS_EVENTS_BIND", "127.0.0.1:8001")]
    workers = _int("BGJOBS_EVENTS_WORKERS", 1)
    # SSE streams live for minutes: no worker timeout on idle streams.
    timeout = 0
    keepalive = 75
else:
    wsgi_app = "server.api:create_app()"
    worker_class = "gthread"
    bind = [os.environ.get("BGJOBS_API_BIND", "127.0.0.1:8000")]
    workers = _int("BGJOBS_API_WORKERS", 2)
    threads = _int("BGJOBS_API_THREADS", 4)
    timeout = 30
    keepalive = 5

preload_app = False
graceful_timeout = _int("BGJOBS_GRACEFUL_TIMEOUT", 10)
accesslog = os.environ.get("BGJOBS_ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("BGJOBS_LOG_LEVEL", "info")
proc_name = f"bgjobs-{service}"
