"""gunicorn settings of the app: phase 3 of the seed's plan, now that no job state is in memory."""

import os

wsgi_app = "backend.app:create_app()"
bind = [os.environ.get("SEED_APP_BIND", "127.0.0.1:5000")]
workers = 4  # or 2, depending on CPU cores
worker_class = "gthread"  # threads per worker for I/O concurrency
threads = 4
preload_app = False  # each worker makes its own connection pools after the fork
timeout = 30
control_socket_disable = True  # gunicorn 27: no shared control socket per user
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms %(p)s'
accesslog = os.environ.get("SEED_APP_ACCESS_LOG", "-")


def worker_exit(server, worker):
    # Postgres sees clean disconnects.
    from backend import database
    from backend.app import jobs

    database.close()
    app = getattr(worker, "wsgi", None)
    if app is not None:
        jobs.close(app)
