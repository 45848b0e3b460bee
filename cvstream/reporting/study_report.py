"""Studies in a report: figures over seeds with their intervals, paired differences with their verdict, and the decision
view (per budget, the Pareto frontier of quality-time area against cost) as a table and a plot.

The tables read what `cvstream.studies` writes: a figure `<key>` with its 95% interval `<key>_low`, `<key>_high`;
a paired difference `diff_<key>` with `_low`, `_high` and `_resolved`; a frontier with `on_frontier` and `frontier_rank`.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from cvstream.reporting.figures import pyplot, save_figure
from cvstream.reporting.tables import Column, ReportTable, cell

_FLOAT_TYPES = set("eEfFgG%")


def _finite(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def memory_priced(table: pd.DataFrame) -> bool:
    """Whether a comparison's cost counts memory (`timeline.memory.price_per_tb_hour`): then its cost is money, not
    accelerator-hours times one price."""
    return "cost_memory" in table and bool(table.cost_memory.notna().any())


def frontier_cost(table: pd.DataFrame) -> str:
    """The cost a frontier ranks by: money where memory is priced, else accelerator-hours (where only accelerators are
    priced, money is the accelerator-hours times that one price: the same frontier)."""
    return "cost_total" if memory_priced(table) else "accel_hours_total"


def interval_cell(row: Mapping, key: str, form: str | None = None, *, scale: float = 1.0) -> str:
    """The cell of `row[key]` (times `scale`), followed by ± the half-width of its interval where the row has `<key>_high`.
    A whole-number form shows a mean over seeds that is not whole to one decimal."""
    value, high = row.get(key), row.get(f"{key}_high")
    if not _finite(value):
        return cell(value, form)
    value = value * scale if scale != 1 else value
    half = float(high) * scale - float(value) if _finite(high) else None
    if form is not None and form.rstrip("}")[-1:] not in _FLOAT_TYPES:  # a whole-number form ('{:,d}', '{:,}')
        if float(value).is_integer() and (half is None or float(half).is_integer()):
            value, half = int(value), None if half is None else int(half)
        else:
            form = "{:,.1f}"
    return cell(value, form, sd=half)


def seeds_note(seeds: Iterable[int]) -> str | None:
    """The caption of a table of means over seeds (`seeds`: each row's count), None where no row averages several."""
    counts = sorted({int(n) for n in seeds})
    if not counts or counts[-1] < 2:
        return None
    many = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    return f"mean over {many} seeds ± the half-width of its 95% t interval"


def difference_table(table: pd.DataFrame, figures: list[tuple[str, str, str]], *, title: str) -> ReportTable:
    """Each variant's paired difference against the reference (`figures`: key, header, form), one row per variant
    (and budget): the mean difference ± the half-width of its 95% interval, and whether the interval excludes 0."""
    figures = [f for f in figures if f"diff_{f[0]}" in table]
    by_budget = "backfill_accelerators" in table and table.backfill_accelerators.nunique() > 1
    columns = ([Column("backfill acc.")] if by_budget else []) + [Column("variant", numeric=False)]
    out = ReportTable(title, columns + [Column(f"Δ {header}") for _, header, _ in figures])
    rows = table[table.variant != table.reference] if "reference" in table else table.iloc[:0]
    for row in rows.to_dict("records"):
        cells = ([cell(row["backfill_accelerators"])] if by_budget else []) + [row["variant"]]
        for key, _, form in figures:
            resolved = row[f"diff_{key}_resolved"]
            verdict = "resolved" if not pd.isna(resolved) and bool(resolved) else "unresolved"
            cells.append(f"{interval_cell(row, f'diff_{key}', form)} {verdict}")
        out.add_row(*cells)
    if len(table) and "reference" in table:
        reference, seeds = table.reference.iloc[0], int(table.seeds.min())
        out.caption = (f"variant minus {reference}, seed by seed: the mean ± the half-width of its 95% t interval over {seeds} seeds; "
                       "resolved: the interval excludes 0")
    return out


def frontier_table(frontier: pd.DataFrame, *, title: str) -> ReportTable:
    """Per budget, every variant in order of cost: its quality-time area, accelerator-hours (and money), whether it is on
    the Pareto frontier (emphasised) and its place there; the caption lists each budget's frontier, cheapest first."""
    priced, money = "cost_total" in frontier and bool(frontier.cost_total.notna().any()), memory_priced(frontier)
    figures = [("quality_time_area", "R@1 area", "{:.3f}"), ("accel_hours_total", "acc-hours", "{:,.1f}")]
    if money:
        figures.append(("cost_memory", "memory cost", "{:,.0f}"))
    if priced:
        figures.append(("cost_total", "cost", "{:,.0f}"))
    columns = [Column("backfill acc."), Column("variant", numeric=False)] + [Column(header) for _, header, _ in figures]
    out = ReportTable(title, columns + [Column("on frontier", numeric=False), Column("frontier rank")])
    for row in frontier.to_dict("records"):
        out.add_row(cell(row["backfill_accelerators"]), row["variant"], *[interval_cell(row, key, form) for key, _, form in figures],
                    "yes" if row["on_frontier"] else "no", cell(None if pd.isna(row["frontier_rank"]) else int(row["frontier_rank"])),
                    strong=bool(row["on_frontier"]))
    lines = [f"{budget:g} backfill accelerators: " + " → ".join(group[group.on_frontier].variant)
             for budget, group in frontier.groupby("backfill_accelerators", sort=True)]
    over = seeds_note(frontier.seeds) if "seeds" in frontier else None
    on = "frontier of the means over seeds, cheapest first" if over else "frontier, cheapest first"
    on += " in money, memory counted" if money else ""
    out.caption = "; ".join([f"{on} (more area for more cost): " + "; ".join(lines)] + ([over] if over else [])) if lines else None
    return out


def plot_frontier(frontier: pd.DataFrame, path: Path, *, title: str = "quality-time area against cost") -> Path:
    """Quality-time area against accelerator-hours, one colour per budget: every variant a labelled point (hollow when
    dominated, with its interval over seeds as a bar where there is one), each budget's frontier connected in order of
    cost; where a price is given, money on the upper axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 6.0), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    money = memory_priced(frontier)  # cost is money (accelerators and memory), not accelerator-hours times one price
    cost = frontier_cost(frontier)
    x_span = float(np.ptp(frontier[cost].to_numpy(float))) if len(frontier) else 0.0
    y_span = float(np.ptp(frontier.quality_time_area.to_numpy(float))) if len(frontier) else 0.0
    unresolved: list[str] = []
    for number, (budget, group) in enumerate(frontier.groupby("backfill_accelerators", sort=True)):
        colour = colours[number % len(colours)]
        x, y = group[cost].to_numpy(float), group.quality_time_area.to_numpy(float)
        if "quality_time_area_high" in group and group.quality_time_area_high.notna().any():
            ax.errorbar(x, y, yerr=[y - group.quality_time_area_low.to_numpy(float), group.quality_time_area_high.to_numpy(float) - y],
                        fmt="none", ecolor=colour, alpha=0.5, capsize=3, linewidth=0.9)
        on = group[group.on_frontier]
        ax.plot(on[cost], on.quality_time_area, marker="o", color=colour, linewidth=1.4, label=f"{budget:g} backfill accelerators")
        off = group[~group.on_frontier]
        ax.plot(off[cost], off.quality_time_area, marker="o", linestyle="none", markerfacecolor="white", color=colour)
        for cluster in overlapping(group, x_span=x_span, y_span=y_span, cost=cost):
            first = group.iloc[cluster[0]]
            ax.annotate(" = ".join(group.variant.iloc[cluster]), (first[cost], first.quality_time_area),
                        textcoords="offset points", xytext=(5, 4 + 10 * number), fontsize=8, color=colour)
            if len(cluster) > 1:
                unresolved.append(f"{budget:g}: {', '.join(group.variant.iloc[cluster])}")
    if not money and "cost_total" in frontier and frontier.cost_total.notna().any():
        priced = frontier[frontier.cost_total.notna() & (frontier.accel_hours_total > 0)]
        price = float((priced.cost_total / priced.accel_hours_total).median()) if len(priced) else 0.0
        if price > 0:
            top = ax.secondary_xaxis("top", functions=(lambda h: h * price, lambda c: c / price))
            top.set_xlabel("cost (money)")
    ax.plot([], [], marker="o", linestyle="none", markerfacecolor="white", color="grey", label="dominated (off the frontier)")
    ax.set_xlabel("cost (money): accelerator-hours and serving memory (lower is better)" if money
                  else "accelerator-hours, all jobs (lower is better)")
    ax.set_ylabel("R@1 quality-time area (higher is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if unresolved:  # a figure that cannot separate variants says so, under its axis
        note = ("this figure cannot separate (within 1% of either axis), by budget: " + "; ".join(unresolved)
                + ". The paired differences can.")
        ax.set_xlabel(ax.get_xlabel() + "\n\n" + "\n".join(textwrap.wrap(note, 130)), fontsize=9)
    return save_figure(fig, path)


def overlapping(group: pd.DataFrame, *, x_span: float, y_span: float, share: float = 0.01, cost: str = "accel_hours_total") -> list[list[int]]:
    """Rows of `group` (positions) in clusters whose points lie within `share` of either axis's span of one another in
    both cost (the column `cost`) and area (chained): the points a plot cannot tell apart. Every row is in exactly one
    cluster."""
    x, y = group[cost].to_numpy(float), group.quality_time_area.to_numpy(float)
    parent = list(range(len(group)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(group)):
        for j in range(i + 1, len(group)):
            if abs(x[i] - x[j]) <= share * x_span and abs(y[i] - y[j]) <= share * y_span:
                parent[root(j)] = root(i)
    clusters: dict[int, list[int]] = {}
    for i in range(len(group)):
        clusters.setdefault(root(i), []).append(i)
    return list(clusters.values())
