"""The product's job types. Importing this package registers them."""

from bgjobs.tasks.builtin import noop, optimization, rescoring, validation  # noqa: F401
