"""The seed's app as it was before the migration (kept to compare against; see app.py)."""
