"""The seed's gunicorn settings before the migration: one process, one thread.

Job state lives in that process's dicts, so a second worker would answer 404 for jobs it did not
start, and a second thread would race the dicts.
"""

import os

wsgi_app = "before.app:create_app()"
bind = [os.environ.get("SEED_APP_BIND", "127.0.0.1:5000")]
workers = 1
worker_class = "sync"
timeout = 120  # a request waits behind the jobs' threads for the GIL
control_socket_disable = True
accesslog = os.environ.get("SEED_APP_ACCESS_LOG", "-")
