"""gunicorn settings for both bgjobs services; BGJOBS_SERVICE picks which one (api or events).

`bgjobs api` and `bgjobs events` set it. The app factory runs in each worker after fork
(no preload), so every worker makes its own connection pool.
"""

import logging
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
    # The app has a lifespan (the LISTEN connection, the pool); failing to start it is fatal.
    asgi_lifespan = "on"
    worker_connections = _int("BGJOBS_EVENTS_CONNECTIONS", 2000)

    def post_fork(server, worker):
        # Library loggers (server.*: listener reconnects, dropped payloads) go to the error log.
        logging.basicConfig(level=os.environ.get("BGJOBS_LOG_LEVEL", "info").upper(),
                            format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")

    def post_worker_init(worker):
        # On SIGTERM, end the open streams at once instead of waiting out graceful_timeout.
        from server.events import drain_on_sigterm

        drain_on_sigterm(worker)
else:
    wsgi_app = "server.api:create_app()"
    worker_class = "gthread"
    bind = [os.environ.get("BGJOBS_API_BIND", "127.0.0.1:8000")]
    # Defaults match server.config (2-4 workers by CPU count, 4 threads each).
    workers = _int("BGJOBS_API_WORKERS", min(4, max(2, os.cpu_count() or 2)))
    threads = _int("BGJOBS_API_THREADS", 4)
    # A request waits at most ~5 s for a pooled connection (then 503), so 30 s is generous.
    timeout = 30
    keepalive = 5
    # The worker pid in each line shows which process answered.
    access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms %(p)s'

    def post_fork(server, worker):
        # Library loggers (server.*) go where gunicorn's error log goes; the handler is made
        # here, after fork, so no worker shares a lock with the master.
        logging.basicConfig(level=os.environ.get("BGJOBS_LOG_LEVEL", "info").upper(),
                            format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")

    def worker_exit(server, worker):
        # Close the worker's connection pool so Postgres sees clean disconnects.
        app = getattr(worker, "wsgi", None)
        if app is not None:
            from server.api import close

            close(app)

preload_app = False
# gunicorn 27's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl):
# the API, the events service and test instances would fight over it. bgjobs needs none.
control_socket_disable = True
graceful_timeout = _int("BGJOBS_GRACEFUL_TIMEOUT", 10)
accesslog = os.environ.get("BGJOBS_ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("BGJOBS_LOG_LEVEL", "info")
proc_name = f"bgjobs-{service}"
