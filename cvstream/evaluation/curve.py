"""The backfill curve (FastFill, Jaeckle et al. ICCV 2023): accuracy against the fraction backfilled.

At one session, the stale items are re-embedded in a given order, 0%, 1/steps, ..., 100% of
them, each state searched exactly (flat) by the session's queries through the gallery's own search
(`Gallery.exact_copy`). The area is the mean over the evaluated fractions, 0% and 100% included.
Works on a copy; the gallery is untouched.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from cvstream.evaluation.evaluator import evaluate_queries

CURVE_COLUMNS = ["session", "order", "fraction", "items_backfilled", "subset", "metric", "value", "n_queries", "area"]


def backfill_curve(
    *, gallery, order: np.ndarray, new_vectors: np.ndarray, queries: np.ndarray, query_classes: np.ndarray,
    subsets: dict[str, np.ndarray], steps: int, session: int, order_name: str,
) -> pd.DataFrame:
    """Rows of R@1 and mAP@R per fraction and subset; `order` are the stale item ids, first backfilled first."""
    clock = time.perf_counter()
    view = gallery.exact_copy()  # searched as the gallery is: segment dimensions and narrow_queries kept
    rows, done = [], 0
    for step in range(steps + 1):
        fraction = step / steps
        count = int(round(fraction * len(order)))
        view.replace(order[done:count], new_vectors[done:count], session=session)
        done = count
        for row in evaluate_queries(queries, query_classes, view, subsets=subsets, recall_at=[1], map_at_r=True):
            rows.append({"session": session, "order": order_name, "fraction": fraction, "items_backfilled": count, **row})
    frame = pd.DataFrame(rows, columns=CURVE_COLUMNS[:-1])
    # FastFill's area: the mean over the evaluated fractions (equally spaced, both ends included).
    frame["area"] = frame.groupby(["subset", "metric"])["value"].transform("mean")
    frame.attrs["seconds"] = time.perf_counter() - clock
    return frame
