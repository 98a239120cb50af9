"""bgjobs server side: the job store, migrations, the HTTP API, the SSE events service, the CLI."""
