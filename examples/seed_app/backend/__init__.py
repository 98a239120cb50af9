"""The seed's backend, migrated from in-memory job dicts to bgjobs (see README.md)."""
