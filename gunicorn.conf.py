"""gunicorn settings for running bgjobs's services with plain `gunicorn` from this checkout.

`bgjobs api` and `bgjobs events` use the same settings, installed with the package as
bgjobs.server.gunicorn_conf (BGJOBS_SERVICE=api|events picks the service).
"""

from bgjobs.server.gunicorn_conf import *  # noqa: F403
