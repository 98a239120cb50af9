"""The product's job types. Importing this package registers them."""

from worker.tasks import noop  # noqa: F401
