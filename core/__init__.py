"""bgjobs's core layer: configuration, connections, the job store, its SQL, migrations, errors.

Everything else imports this layer; it imports nothing of bgjobs's own above it.
"""
