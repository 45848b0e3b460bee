"""Metrics (pure functions of arrays, the METRICS registry), retrieval over a gallery, the evaluator of a session,
the compatibility matrix across generations, and the backfill curve."""
