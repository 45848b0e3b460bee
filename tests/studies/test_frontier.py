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


def test_with_memory_priced_the_frontier_ranks_money_not_accelerator_hours(tmp_path):
    """Waiting holds two copies of the vectors: at nearly the accelerator-hours of dual, it costs more once memory is
    priced, and the frontier (and its table) rank by that money."""
    from cvstream.reporting.study_report import frontier_table, plot_frontier

    table = pd.DataFrame({
        "backfill_accelerators": [8, 8, 8],
        "variant": ["full-hot", "dual", "full-after-backfill"],
        "quality_time_area": [0.690, 0.694, 0.695],
        "accel_hours_total": [4635.0, 4643.0, 4644.0],
        "cost_memory": [100.0, 100.0, 250.0],
    })
    table["cost_total"] = 3.0 * table.accel_hours_total + table.cost_memory
    hours = frontier_frame(table.drop(columns="cost_memory"))  # accelerators priced alone: the same order as their hours
    assert hours.variant.tolist() == ["full-hot", "dual", "full-after-backfill"]
    money = frontier_frame(table)
    assert money.cost_total.is_monotonic_increasing and money.on_frontier.all()
    # Waiting the fewest accelerator-hours but the most memory: by hours it dominates both; by money (14,005 for
    # full-hot, 14,050 for waiting, 14,080 for dual) full-hot is the cheap end of the frontier and dual is off it.
    shifted = table.assign(accel_hours_total=[4635.0, 4660.0, 4600.0])
    shifted["cost_total"] = 3.0 * shifted.accel_hours_total + shifted.cost_memory
    by_hours = frontier_frame(shifted.drop(columns="cost_memory"))
    assert by_hours[by_hours.on_frontier].variant.tolist() == ["full-after-backfill"]
    by_money = frontier_frame(shifted)
    assert by_money.variant.tolist() == ["full-hot", "full-after-backfill", "dual"]
    assert by_money.on_frontier.tolist() == [True, True, False]
    text = " ".join(str(frontier_table(by_money, title="t").caption).split())
    assert "in money, memory counted" in text and "full-hot → full-after-backfill" in text
    assert plot_frontier(by_money, tmp_path / "money.png").stat().st_size > 10_000  # drawn against money
