"""The library's own job types, for trying bgjobs out. Importing this package registers them."""

from bgjobs.tasks.builtin import demo, noop  # noqa: F401
