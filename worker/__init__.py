"""Worker supervisor and processes: one LISTEN connection per machine, N job processes."""
