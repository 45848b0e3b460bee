"""Several runs that answer one question: `compare` (backfill and serving policies) and `sweep`."""
