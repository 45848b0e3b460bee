"""The service timeline in a report: its summary table and quality over simulated time, deploys and backfills marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cvstream.reporting.figures import save_figure
from cvstream.reporting.tables import Column, ReportTable, cell

SUMMARY_COLUMNS = [
    ("quality_time_area", "R@1 area", "{:.3f}"),
    ("worst_dip", "worst dip", "{:.3f}"),
    ("recovery_hours_mean", "recovery h (mean)", "{:.1f}"),
    ("recovery_hours_max", "recovery h (max)", "{:.1f}"),
    ("unrecovered_deploys", "unrecovered", "{:d}"),
    ("accel_hours_train", "train acc-h", "{:.1f}"),
    ("accel_hours_backfill", "backfill acc-h", "{:.1f}"),
    ("accel_hours_serve", "serve acc-h", "{:.1f}"),
]


def summary_table(summaries: dict[str, dict], *, title: str) -> ReportTable:
    """One row per timeline: quality-time area, worst dip, recovery hours and accelerator-hours by job."""
    table = ReportTable(title, [Column("timeline", numeric=False)] + [Column(header) for _, header, _ in SUMMARY_COLUMNS])
    for label, summary in summaries.items():
        table.add_row(label, *[cell(summary.get(key), form) for key, _, form in SUMMARY_COLUMNS])
    return table


def backfill_spans(frame: pd.DataFrame) -> list[tuple[float, float]]:
    """(start, end) hours of every backfill: from its start to its completion or to a re-target."""
    spans, start = [], None
    for row in frame.itertuples(index=False):
        if row.kind == "backfill_start":
            start = row.time_hours
        elif row.kind in ("backfill_done", "backfill_retarget") and start is not None:
            spans.append((start, row.time_hours))
            start = None
    if start is not None:
        spans.append((start, float(frame.time_hours.max())))
    return spans


def plot_timeline(frames: dict[str, pd.DataFrame], path: Path, *, title: str = "quality over simulated time") -> Path:
    """R@1 (all) of each timeline over hours (steps: a value holds until the next evaluation), the completed-full-backfill
    reference dotted, deploys as ticks and backfill spans shaded (for a single timeline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.8), dpi=110)
    single = len(frames) == 1
    longest = max((float(f.time_hours.max()) for f in frames.values() if len(f)), default=0.0)
    unit, per = ("days", 24.0) if longest > 24 * 14 else ("hours", 1.0)  # a year reads in days, a week in hours
    for label, frame in frames.items():
        evaluated = frame[(frame.kind == "evaluate") & frame.r1_all.notna()]
        (line,) = ax.step(evaluated.time_hours / per, evaluated.r1_all, where="post", label=f"{label}: R@1 all", linewidth=1.2)
        if single:
            ax.step(evaluated.time_hours / per, evaluated.r1_full, where="post", linestyle=":", color="black", linewidth=1.0,
                    label="same items, completed full backfill")
            for start, end in backfill_spans(frame):
                ax.axvspan(start / per, max(end / per, start / per + longest / per / 800), color="tab:orange", alpha=0.25, linewidth=0)
        deploys = frame[frame.kind == "deploy"].time_hours / per
        ax.plot(deploys, np.full(len(deploys), -0.02), marker="|", markersize=12, linestyle="none", color=line.get_color())
    if single and any(backfill_spans(f) for f in frames.values()):
        ax.axvspan(np.nan, np.nan, color="tab:orange", alpha=0.25, label="backfill running")
    ax.plot([], [], marker="|", linestyle="none", color="black", label="deploy")
    ax.set_xlabel(f"simulated {unit}")
    ax.set_ylabel("R@1 of the queries asked then")
    ax.set_ylim(-0.05, 1.0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return save_figure(fig, path)
