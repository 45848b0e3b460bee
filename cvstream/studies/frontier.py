"""The decision view: per budget, the Pareto frontier of quality-time area (higher is better) against cost (lower is better).

A point is on the frontier when no other point has at least its area at no more than its cost.
Points equal in both are one choice: the first listed stands on the frontier for them. A point
whose area or cost is NaN is never on it.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from cvstream.reporting.study_report import frontier_cost


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (area, cost) points on the frontier, in order of cost (the cheapest first, so area rises too)."""
    usable = [i for i, (area, cost) in enumerate(points) if not (math.isnan(area) or math.isnan(cost))]
    # cheapest first; at equal cost the best area first; at equal both, the first listed first
    order = sorted(usable, key=lambda i: (points[i][1], -points[i][0], i))
    frontier, best = [], -math.inf
    for i in order:
        if points[i][0] > best:  # more area than everything as cheap or cheaper
            frontier.append(i)
            best = points[i][0]
    return frontier


def frontier_frame(table: pd.DataFrame, *, area: str = "quality_time_area", cost: str | None = None,
                   budget: str = "backfill_accelerators") -> pd.DataFrame:
    """The decision view of a timeline comparison (a row per budget and variant, means over seeds): per budget, its
    variants in order of cost (`cost`, default `frontier_cost`) with `on_frontier` and `frontier_rank` (1: the cheapest
    on the frontier)."""
    cost = cost or frontier_cost(table)
    keep = [c for c in (budget, "variant", area, f"{area}_low", f"{area}_high", "accel_hours_total", "cost_memory", "cost_total", "seeds")
            if c in table]
    parts = []
    for _, group in table.groupby(budget, sort=True):
        group = group[keep].reset_index(drop=True)
        on = pareto_frontier(list(zip(group[area].astype(float), group[cost].astype(float))))
        group["on_frontier"] = [i in on for i in range(len(group))]
        group["frontier_rank"] = pd.array([on.index(i) + 1 if i in on else None for i in range(len(group))], dtype="Int64")
        parts.append(group.sort_values([cost, area], ascending=[True, False], kind="stable", na_position="last"))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*keep, "on_frontier", "frontier_rank"])
