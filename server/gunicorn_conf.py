"""gunicorn settings for both bgjobs services; BGJOBS_SERVICE picks which one (api or events).

`bgjobs api` and `bgjobs events` run ``gunicorn -c python:bgjobs.server.gunicorn_conf`` with
BGJOBS_SERVICE set. Every value comes from bgjobs.core.config. The app factory runs in each
worker after fork (no preload), so every worker makes its own connection pool.
"""

from gunicorn import util as _gunicorn_util

from bgjobs.core import config as _config

_cfg = _config.load()
service = _cfg.service


def _write_json_error(sock, status_int, reason, mesg):
    # gunicorn's answer to a request it cannot parse is an HTML page: make it the JSON error
    # every other answer is. Its workers call util.write_error, so replacing it here (in the
    # master, before the fork) covers every worker.
    from bgjobs.server.errors import raw_response

    _gunicorn_util.write_nonblock(sock, raw_response(status_int, reason, mesg))


_gunicorn_util.write_error = _write_json_error


def _json_errors_in_asgi():
    # The asgi worker (the events service) answers them as text/plain, from its protocol.
    from http import HTTPStatus

    from gunicorn.asgi import protocol

    from bgjobs.server.errors import raw_response

    # gunicorn's private ASGI internals, patched on purpose: pyright flags each private name.
    def send_error(self, status, message, extra_headers=()):
        reason = (protocol._REASON_PHRASES.get(status)  # pyright: ignore[reportAttributeAccessIssue]
                  or HTTPStatus(status).phrase)
        self._safe_write(raw_response(status, reason, message, tuple(extra_headers)))

    protocol.ASGIProtocol._send_error_response = send_error  # pyright: ignore[reportAttributeAccessIssue]


def _transport_in_scope():
    # The events fan-out writes a stream's later events straight to its socket
    # (server/fanout.py): lend the app the transport of each HTTP/1.1 connection. Without it
    # (another server, HTTP/2, uWSGI) streams send everything through ASGI `send`.
    from gunicorn.asgi import protocol

    from bgjobs.server.fanout import EXTENSION

    # A private name of gunicorn's, patched on purpose (pyright flags each use).
    build = protocol.ASGIProtocol._build_http_scope  # pyright: ignore[reportAttributeAccessIssue]

    def build_http_scope(self, request, sockname, peername):
        scope = build(self, request, sockname, peername)
        if request.version == (1, 1) and not getattr(self, "_uses_uwsgi", True):
            scope.setdefault("extensions", {})[EXTENSION] = self.transport
        return scope

    protocol.ASGIProtocol._build_http_scope = build_http_scope  # pyright: ignore[reportAttributeAccessIssue]


if service == "events":
    wsgi_app = "bgjobs.server.events:create_app()"
    worker_class = "asgi"
    _json_errors_in_asgi()
    _transport_in_scope()
    bind = [_cfg.events_bind]
    workers = _cfg.events_workers
    # SSE streams live for minutes: no worker timeout on idle streams.
    timeout = 0
    keepalive = 75
    # The app has a lifespan (the LISTEN connection, the pool); failing to start it is fatal.
    asgi_lifespan = "on"
    # The app refuses streams past BGJOBS_EVENTS_CONNECTIONS with a JSON 503; this leaves room
    # for those answers and for health checks should gunicorn enforce the limit itself.
    worker_connections = _cfg.events_connections + 100

    def post_worker_init(worker):
        # On SIGTERM, end the open streams at once instead of waiting out graceful_timeout.
        from bgjobs.server.events import drain_on_sigterm

        drain_on_sigterm(worker)
else:
    wsgi_app = "bgjobs.server.api:create_app()"
    worker_class = "gthread"
    bind = [_cfg.api_bind]
    workers = _cfg.api_workers
    threads = _cfg.api_threads
    # A request waits at most ~5 s for a pooled connection (then 503), so 30 s is generous.
    timeout = 30
    keepalive = 5
    # The worker pid in each line shows which process answered.
    access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms %(p)s'

    def worker_exit(server, worker):
        # Close the worker's connection pool so Postgres sees clean disconnects.
        app = getattr(worker, "wsgi", None)
        if app is not None:
            from bgjobs.server.api import close

            close(app)


def post_fork(server, worker):
    # bgjobs's loggers (listener reconnects, dropped payloads) go where gunicorn's error log
    # goes; the handler is made here, after fork, so no worker shares a lock with the master.
    _config.setup_logging(_cfg.log_level)


preload_app = False
# gunicorn 27's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl):
# the API, the events service and test instances would fight over it. bgjobs needs none.
control_socket_disable = True
graceful_timeout = _cfg.graceful_timeout
accesslog = _cfg.access_log
errorlog = "-"
loglevel = _cfg.log_level.lower()
proc_name = f"bgjobs-{service}"
