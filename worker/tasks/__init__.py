"""The product's job types. Importing this package registers them."""

from worker.tasks import noop, optimization, rescoring, validation  # noqa: F401
