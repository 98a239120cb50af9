"""bgjobs workers: a supervisor per machine that listens, claims and hands jobs to processes."""
