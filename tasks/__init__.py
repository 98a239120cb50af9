"""bgjobs's tasks layer: the job-type registry, the handler's context, the one enqueue path and
the built-in job types. Built on bgjobs.core; the worker, API and events service build on it."""
