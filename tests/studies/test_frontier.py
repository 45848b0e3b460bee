"""The decision view: the Pareto frontier of quality-time area (higher is better) against cost (lower is better)."""

from __future__ import annotations

import pandas as pd

from cvstream.studies.frontier import frontier_frame, pareto_frontier


def test_frontier_of_a_hand_made_set():
    points = [(0.5, 1), (0.6, 2), (0.55, 3), (0.7, 5)]  # (area, cost): (0.55, 3) costs more than (0.6, 2) for less
    assert pareto_frontier(points) == [0, 1, 3]
    assert pareto_frontier(points[::-1]) == [3, 2, 0]  # still in order of cost, whatever the input order


def test_ties_and_missing_values_are_decided_the_same_way_every_time():
    assert pareto_frontier([(0.6, 2), (0.6, 2)]) == [0]  # equal in both: the first listed stands for them
    assert pareto_frontier([(0.5, 2), (0.6, 2)]) == [1]  # equal cost: the better area
    assert pareto_frontier([(0.6, 1), (0.6, 2)]) == [0]  # equal area: the cheaper
    assert pareto_frontier([(float("nan"), 1), (0.4, float("nan")), (0.3, 4)]) == [2]
    assert pareto_frontier([]) == []


def test_frontier_frame_marks_each_budget_apart():
    table = pd.DataFrame({
        "backfill_accelerators": [8, 8, 8, 8, 2, 2],
        "variant": ["none", "full", "partial", "dual", "none", "full"],
        "quality_time_area": [0.5, 0.7, 0.55, 0.6, 0.5, 0.45],
        "accel_hours_total": [1.0, 5.0, 3.0, 2.0, 1.0, 4.0],
    })
    frontier = frontier_frame(table)
    assert list(zip(frontier.backfill_accelerators, frontier.variant)) == [
        (2, "none"), (2, "full"), (8, "none"), (8, "dual"), (8, "partial"), (8, "full")]
    assert frontier.on_frontier.tolist() == [True, False, True, True, False, True]
    assert frontier.frontier_rank.tolist() == [1, pd.NA, 1, 2, pd.NA, 3]
