"""The service timeline in a report: its summary table and quality over simulated time, deploys and backfills marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cvstream.reporting.figures import save_figure
from cvstream.reporting.study_report import interval_cell, seeds_note
from cvstream.reporting.tables import Column, ReportTable

SUMMARY_COLUMNS = [
    ("quality_time_area", "R@1 area", "{:.3f}"),
    ("regret_area", "regret", "{:.3f}"),
    ("worst_dip", "worst dip", "{:.3f}"),
    ("recovery_hours_mean", "recovery h (mean)", "{:.1f}"),
    ("recovery_hours_max", "recovery h (max)", "{:.1f}"),
    ("censored_deploys", "never recovered", "{:,d}"),
    ("negative_flips", "negative flips", "{:,d}"),
    ("accel_hours_train", "train acc-h", "{:,.1f}"),
    ("accel_hours_backfill", "backfill acc-h", "{:,.1f}"),
    ("accel_hours_serve", "serve acc-h", "{:,.1f}"),
    ("cost_memory", "memory cost", "{:,.0f}"),  # only where memory is priced
    ("cost_total", "cost", "{:,.0f}"),
    ("serve_utilization_peak", "serve use (peak)", "{:.2f}"),
    ("memory_bytes_peak", "memory peak GB", "{:,.1f}"),
]


def summary_table(summaries: dict[str, dict], *, title: str) -> ReportTable:
    """One row per timeline: quality-time area and regret, worst dip, recovery hours over the deploys that recovered and
    how many never did, negative flips, accelerator-hours by job, cost, serving utilisation and peak memory. A summary
    averaged over seeds (a study's) shows each figure ± the half-width of its interval (`<key>_high`)."""
    priced = any(pd.notna(summary.get("cost_memory", float("nan"))) for summary in summaries.values())
    columns = [c for c in SUMMARY_COLUMNS if c[0] != "cost_memory" or priced]
    table = ReportTable(title, [Column("timeline", numeric=False)] + [Column(header) for _, header, _ in columns])
    warnings = []
    for label, summary in summaries.items():
        table.add_row(label, *[interval_cell(summary, key, form, scale=1e-9 if key == "memory_bytes_peak" else 1.0)
                               for key, _, form in columns])
        warnings += [f"{label}: {w}" for w in summary.get("warnings", [])]
    note = seeds_note(summary["seeds"] for summary in summaries.values() if "seeds" in summary)
    table.caption = "; ".join(([note] if note else []) + warnings) or None
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
    """Above: R@1 (all) of each timeline over time (steps: a value holds until the next evaluation), deploys as ticks;
    for a single timeline its references (the serving generation fully backfilled, dotted; the newest trained
    generation fully backfilled, dashed) and its backfill spans shaded; for several, the newest-generation reference
    of the first one that backfills (its learning side), dashed grey. Below: each timeline's cumulative
    accelerator-hours, all jobs together (the summary table prices them)."""
    from cvstream.reporting.figures import pyplot

    plt = pyplot()
    fig, (ax, cost_ax) = plt.subplots(2, 1, figsize=(11, 7.2), dpi=110, sharex=True, gridspec_kw={"height_ratios": [2.2, 1]})
    single = len(frames) == 1
    longest = max((float(f.time_hours.max()) for f in frames.values() if len(f)), default=0.0)
    unit, per = ("days", 24.0) if longest > 24 * 14 else ("hours", 1.0)  # a year reads in days, a week in hours
    served = {label: _served_evaluations(frame) for label, frame in frames.items()}
    backfilling = [label for label, frame in frames.items() if len(frame) and frame.get("accel_hours_backfill", pd.Series([0])).iloc[-1] > 0]
    reference = backfilling[0] if backfilling else next(iter(frames), None)
    if reference is not None and "r1_best" in served[reference]:
        best = served[reference]
        ax.step(best.time_hours / per, best.r1_best, where="post", linestyle="--", color="tab:green" if single else "grey",
                linewidth=0.9, label="newest generation, fully backfilled" + ("" if single else f" ({reference})"))
    for label, frame in frames.items():
        evaluated = served[label]
        hours = evaluated.time_hours / per
        (line,) = ax.step(hours, evaluated.r1_all, where="post", label=label, linewidth=1.1)
        colour = line.get_color()
        if single:
            ax.step(hours, evaluated.r1_full, where="post", linestyle=":", color="black", linewidth=0.9,
                    label="serving generation, fully backfilled")
            for start, end in backfill_spans(frame):
                ax.axvspan(start / per, max(end / per, start / per + longest / per / 800), color="tab:orange", alpha=0.25, linewidth=0)
        deploys = frame[frame.kind == "deploy"].time_hours / per
        ax.plot(deploys, np.full(len(deploys), -0.02), marker="|", markersize=10, linestyle="none", color=colour)
        jobs = [c for c in frame.columns if c.startswith("accel_hours_")]
        cost_ax.step(frame.time_hours / per, frame[jobs].sum(axis=1), where="post", color=colour, linewidth=1.1, label=label)
    if single and any(backfill_spans(f) for f in frames.values()):
        ax.axvspan(np.nan, np.nan, color="tab:orange", alpha=0.25, label="backfill running")
    ax.plot([], [], marker="|", linestyle="none", color="black", label="deploy")
    ax.set_ylabel("R@1 of the queries asked then")
    ax.set_ylim(-0.05, 1.0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    cost_ax.set_ylabel("accelerator-hours, all jobs\n(cumulative)")
    cost_ax.set_xlabel(f"simulated {unit}")
    cost_ax.grid(alpha=0.3)
    cost_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return save_figure(fig, path)


def _served_evaluations(frame: pd.DataFrame) -> pd.DataFrame:
    """The evaluations that hold for a while: the dip's baseline at a switch (`before_switch`) takes no time."""
    evaluated = frame[(frame.kind == "evaluate") & frame.r1_all.notna()]
    if "detail" in evaluated:
        evaluated = evaluated[~evaluated.detail.astype(str).str.contains('"before_switch"')]
    return evaluated
