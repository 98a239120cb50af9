"""The HTTP API, the SSE events service, the dashboard and their gunicorn settings."""
