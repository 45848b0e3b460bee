"""Studies in a report: means over seeds with their intervals, paired differences with their verdict, the frontier table
and plot, each on a hand-made table."""

from __future__ import annotations

import io

import pandas as pd
from rich.console import Console

from cvstream.reporting.figures import pyplot
from cvstream.reporting.html_report import table_html
from cvstream.reporting.study_report import difference_table, frontier_table, interval_cell, plot_frontier, seeds_note
from cvstream.reporting.timeline_report import summary_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _text(renderable) -> str:
    console = Console(file=io.StringIO(), record=True, width=200, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_interval_cells():
    row = {"area": 0.45, "area_high": 0.5, "flips": 1.5, "flips_high": 4.0, "forwards": 120.0, "forwards_high": 120.0, "one": 0.3}
    assert interval_cell(row, "area", "{:.3f}") == "0.450 ± 0.050"
    assert interval_cell(row, "one", "{:.3f}") == "0.300"  # no interval: one seed, or a single run
    assert interval_cell(row, "flips", "{:,d}") == "1.5 ± 2.5"  # a count averaged over seeds keeps its fraction
    assert interval_cell(row, "forwards", "{:,}") == "120"  # the same on every seed
    assert interval_cell({"area": float("nan"), "area_high": float("nan")}, "area", "{:.3f}") == "-"
    assert interval_cell({"memory": 2e9, "memory_high": 3e9}, "memory", "{:.1f}", scale=1e-9) == "2.0 ± 1.0"
    assert seeds_note([3, 3]) == "mean over 3 seeds ± the half-width of its 95% t interval" and seeds_note([1]) is None


def test_a_timeline_summary_over_seeds_shows_its_intervals():
    summaries = {"none": {"quality_time_area": 0.4, "quality_time_area_high": 0.43, "memory_bytes_peak": 1e9, "seeds": 3},
                 "full": {"quality_time_area": 0.5, "quality_time_area_high": 0.52, "memory_bytes_peak": 1e9, "seeds": 3}}
    text = _text(summary_table(summaries, title="by policy"))
    assert "0.400 ± 0.030" in text and "0.500 ± 0.020" in text and "mean over 3 seeds" in text


def _study() -> pd.DataFrame:
    return pd.DataFrame({
        "backfill_accelerators": [2, 2, 2], "variant": ["none", "full", "dual"], "reference": ["none"] * 3, "seeds": [3] * 3,
        "diff_quality_time_area": [float("nan"), 0.02, -0.001], "diff_quality_time_area_high": [float("nan"), 0.03, 0.004],
        "diff_quality_time_area_resolved": pd.array([pd.NA, True, False], dtype="boolean"),
    })


def test_difference_table_says_which_differences_are_resolved():
    table = difference_table(_study(), [("quality_time_area", "R@1 area", "{:.3f}"), ("cost_total", "cost", "{:,.0f}")], title="paired")
    assert [c.header for c in table.columns] == ["variant", "Δ R@1 area"]  # no cost without a price; one budget: no budget column
    assert table.rows == [["full", "0.020 ± 0.010 resolved"], ["dual", "-0.001 ± 0.005 unresolved"]]
    assert "variant minus none" in table.caption and "3 seeds" in table.caption
    assert "unresolved" in table_html(table)


def _frontier() -> pd.DataFrame:
    return pd.DataFrame({
        "backfill_accelerators": [2, 2, 8, 8, 8], "variant": ["none", "full", "none", "partial", "full"],
        "quality_time_area": [0.5, 0.45, 0.5, 0.6, 0.7], "quality_time_area_low": [0.48, 0.4, 0.48, 0.57, 0.69],
        "quality_time_area_high": [0.52, 0.5, 0.52, 0.63, 0.71], "accel_hours_total": [1.0, 4.0, 1.0, 2.0, 3.0],
        "cost_total": [2.0, 8.0, 2.0, 4.0, 6.0], "on_frontier": [True, False, True, True, True],
        "frontier_rank": pd.array([1, None, 1, 2, 3], dtype="Int64"),
    })


def test_frontier_table_names_the_frontier_per_budget():
    table = frontier_table(_frontier(), title="decision")
    assert [c.header for c in table.columns] == ["backfill acc.", "variant", "R@1 area", "acc-hours", "cost", "on frontier", "frontier rank"]
    assert table.rows[1] == ["2", "full", "0.450 ± 0.050", "4.0", "8", "no", "-"]
    assert table.strong == [True, False, True, True, True]
    assert table.caption.endswith("2 backfill accelerators: none; 8 backfill accelerators: none → partial → full")


def test_frontier_plot_is_written(tmp_path):
    path = plot_frontier(_frontier(), tmp_path / "frontier.png", title="decision")
    assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 10_000
    assert not pyplot().get_fignums()  # closed


def test_points_a_plot_cannot_separate_are_clustered():
    from cvstream.reporting.study_report import overlapping

    group = pd.DataFrame({"variant": ["none", "full-hot", "dual", "wait", "partial"],
                          "accel_hours_total": [40.0, 102.7, 102.8, 103.0, 58.0],
                          "quality_time_area": [0.38, 0.748, 0.749, 0.750, 0.69]})
    # spans 63 h and 0.37: 1% is 0.63 h and 0.0037; the three full policies chain within it, the others stand alone
    assert overlapping(group, x_span=63.0, y_span=0.37) == [[0], [1, 2, 3], [4]]
    assert overlapping(group, x_span=63.0, y_span=0.37, share=0.001) == [[0], [1], [2], [3], [4]]
