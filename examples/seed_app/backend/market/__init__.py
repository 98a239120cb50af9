"""The seed's market computations as job types: validation, optimization and rescoring.

A synthetic market backtest (data.py), the seed's reference workload. Importing this package
registers the three types; backend.jobs does, for the app and its workers.
"""

from backend.market import optimization, rescoring, validation  # noqa: F401
