"""`cvstream report`: tables for the terminal and PNG plots next to the data, for one run or several.

Runs of the same scenario that differ only in their seed form one group, shown as the
mean and spread (standard deviation) over seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from cvstream.errors import UserError
from cvstream.evaluation.metrics import update_gain
from cvstream.reporting.figures import pyplot, save_figure
from cvstream.reporting.tables import Column, ReportTable, cell
from cvstream.simulator.outputs import read_parquet
from cvstream.simulator.run import RunResult, load_run, read_info


@dataclass
class LoadedRun:
    result: RunResult
    info: dict

    @property
    def label(self) -> str:
        s = self.info["scenario"]
        return f"{s['name']} ({s['method']['name']}, backfill {s.get('backfill', {}).get('policy', 'none')})"

    @property
    def group_key(self) -> str:
        """The scenario without its seed and output folder: runs with the same key differ only by seed."""
        s = dict(self.info["scenario"])
        s.pop("seed", None)
        s.pop("output", None)
        return json.dumps(s, sort_keys=True)


@dataclass
class Group:
    label: str
    runs: list[LoadedRun]


@dataclass
class Report:
    tables: list[ReportTable] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def load(paths: list[str | Path]) -> list[LoadedRun]:
    runs = [LoadedRun(load_run(p), read_info(p)) for p in paths]
    for path, run in zip(paths, runs):
        if run.result.metrics.empty or run.result.costs.empty:
            raise UserError(f"{path}: the run has no completed session yet; nothing to report")
    return runs


def group(runs: list[LoadedRun]) -> list[Group]:
    groups: dict[str, Group] = {}
    for run in runs:
        groups.setdefault(run.group_key, Group(run.label, [])).runs.append(run)
    out = list(groups.values())
    labels = [g.label for g in out]
    for g in out:  # two different scenarios with the same name and method get their hash
        if labels.count(g.label) > 1:
            g.label += f" [{g.runs[0].info['scenario_hash'][:6]}]"
    return out


# -- tables of numbers ---------------------------------------------------------------------


def per_session(run: LoadedRun, *, metric: str = "recall@1", view: str = "mixed") -> pd.DataFrame:
    """Sessions x subsets (old, new, all) of one metric against one gallery view."""
    return run.result.metric_table(metric, view)


def upgrade_sessions(run: LoadedRun) -> dict[int, str]:
    """Session -> the network a model upgrade built there (SPEC section 12), as `resnet18-cifar, 256-d`."""
    upgrades = run.info["scenario"].get("model", {}).get("upgrades", {})
    return {int(t): f"{u['backbone']}, {u['embedding_dim']}-d" for t, u in upgrades.items()}


def spread(frames: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and standard deviation (0 for a single run) over runs, aligned on sessions and subsets."""
    stacked = pd.concat(frames, keys=range(len(frames)))
    grouped = stacked.groupby(level=1)
    return grouped.mean(), grouped.std(ddof=0).fillna(0.0)


def compatibility_matrix(metrics: pd.DataFrame) -> pd.DataFrame:
    """C[i][j] (rows: query generation i, columns: gallery generation j) from the `gen:<j>` rows."""
    m = metrics[metrics.gallery_view.str.startswith("gen:") & (metrics.metric == "recall@1")].copy()
    if m.empty:
        return pd.DataFrame()
    m["gallery_generation"] = m.gallery_view.str.slice(4).astype(int)
    return m.pivot_table(index="query_generation", columns="gallery_generation", values="value")


def cumulative_forwards(costs: pd.DataFrame) -> pd.Series:
    """Backbone forwards of every phase, summed per session and accumulated over sessions."""
    return costs.groupby("session")["backbone_forwards"].sum().sort_index().cumsum()


def update_gains(run: LoadedRun, paragon: LoadedRun) -> pd.DataFrame:
    """Per session t >= 1: BCT's update gain of generation t over t-1, against the paragon's C[t][t]."""
    _check_same_probe(run, paragon)
    c, p = compatibility_matrix(run.result.metrics), compatibility_matrix(paragon.result.metrics)
    rows = []
    gens = list(c.index)
    for new, old in zip(gens[1:], gens[:-1]):
        if new not in p.index or new not in p.columns:
            continue
        values = dict(new_old=float(c.loc[new, old]), old_old=float(c.loc[old, old]), paragon=float(p.loc[new, new]))
        rows.append({"run_id": run.result.run_id, "paragon_run_id": paragon.result.run_id, "session": new,
                     "generation": new, "previous_generation": old, **values, "update_gain": update_gain(**values)})
    return pd.DataFrame(rows)


def _check_same_probe(run: LoadedRun, paragon: LoadedRun) -> None:
    a, b = run.info["scenario"], paragon.info["scenario"]
    same = (
        a.get("seed") == b.get("seed")
        and a.get("evaluation", {}).get("probe_items") == b.get("evaluation", {}).get("probe_items")
        and run.result.stream.equals(paragon.result.stream)
    )
    if not same:
        raise UserError(
            f"--paragon {paragon.result.run_dir}: not the same stream and probe set as {run.result.run_dir} "
            "(the update gain needs the same data set, stream, seed and evaluation.probe_items)"
        )
    if compatibility_matrix(paragon.result.metrics).empty:
        raise UserError(f"--paragon {paragon.result.run_dir}: the run has no compatibility matrix (evaluation.probe_items: 0)")


def recall_table(mean: pd.DataFrame, *, title: str, sd: pd.DataFrame | None = None, upgrades: dict[int, str] | None = None) -> ReportTable:
    """R@1 per session (rows) and subset (columns), with its spread `sd` over seeds where given; a session with a model
    upgrade names the network built there."""
    upgrades = upgrades or {}
    table = ReportTable(title, [Column("session")] + [Column(f"R@1 {c}") for c in mean.columns])
    for session, row in mean.iterrows():
        label = f"{session} (upgrade: {upgrades[session]})" if session in upgrades else str(session)
        table.add_row(label, *[cell(row[c], "{:.3f}", sd=None if sd is None else sd.loc[session, c]) for c in mean.columns])
    return table


def group_recall_table(g: Group) -> ReportTable:
    mean, std = spread([per_session(r) for r in g.runs])
    n_seeds = len({r.info["scenario"].get("seed") for r in g.runs})
    seeds = f", {len(g.runs)} runs ({n_seeds} seeds): mean ± sd" if len(g.runs) > 1 else ""
    return recall_table(mean, title=f"R@1 against the mixed gallery: {g.label}{seeds}", sd=std if len(g.runs) > 1 else None,
                        upgrades=upgrade_sessions(g.runs[0]))


def matrix_table(g: Group) -> ReportTable | None:
    frames = [compatibility_matrix(r.result.metrics) for r in g.runs]
    if any(f.empty for f in frames):
        return None
    mean, _ = spread(frames)
    table = ReportTable(f"compatibility C[i][j] (R@1, probe set): {g.label}",
                        [Column("query gen i \\ gallery gen j")] + [Column(str(j)) for j in mean.columns])
    for i, row in mean.iterrows():
        table.add_row(str(i), *[cell(row[j], "{:.3f}") for j in mean.columns])
    return table


def costs_table(g: Group) -> ReportTable:
    frames = [r.result.costs.groupby("phase")[["backbone_forwards", "transform_forwards", "items", "seconds"]].sum() for r in g.runs]
    mean, _ = spread(frames)
    title = f"costs over the run by phase: {g.label}" + (" (mean over seeds)" if len(g.runs) > 1 else "")
    table = ReportTable(title, [Column("phase", numeric=False)] + [Column(n) for n in ("backbone forwards", "transform forwards", "items", "seconds")])
    for phase, row in mean.iterrows():
        table.add_row(str(phase), cell(row.backbone_forwards, "{:,.0f}"), cell(row.transform_forwards, "{:,.0f}"),
                      cell(row["items"], "{:,.0f}"), cell(row.seconds, "{:.2f}"))
    return table


def gains_table(gains: pd.DataFrame) -> ReportTable:
    table = ReportTable("update gain (BCT): (M(new, old) - M(old, old)) / (M(new*, new*) - M(old, old)), on the probe set",
                        [Column(n) for n in ("run", "session", "M(new, old)", "M(old, old)", "M(new*, new*)", "update gain")])
    for row in gains.itertuples(index=False):
        table.add_row(str(row.run_id), str(row.session), *[cell(v, "{:.3f}") for v in (row.new_old, row.old_old, row.paragon, row.update_gain)])
    return table


# -- plots -----------------------------------------------------------------------------------


def plot_recall(groups: list[Group], path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, subset in zip(axes, ("old", "new")):
        for g in groups:
            mean, std = spread([per_session(r) for r in g.runs])
            if subset not in mean.columns:
                continue
            line = mean[subset].dropna()
            ax.plot(line.index, line.values, marker="o", label=g.label)
            for session in upgrade_sessions(g.runs[0]):  # a model upgrade: a new network from this session on
                ax.axvline(session, color="grey", linestyle=":", linewidth=1)
            if len(g.runs) > 1:
                band = std[subset].loc[line.index]
                ax.fill_between(line.index, line - band, line + band, alpha=0.2)
        ax.set_title(f"{subset} classes")
        ax.set_xlabel("session")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("R@1 (mixed gallery)")
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


def plot_matrix(g: Group, path: Path) -> Path | None:
    frames = [compatibility_matrix(r.result.metrics) for r in g.runs]
    if any(f.empty for f in frames):
        return None
    mean, _ = spread(frames)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(mean.columns), 1 + 0.6 * len(mean)))
    image = ax.imshow(mean.values, cmap="viridis", vmin=0, vmax=max(1e-9, float(np.nanmax(mean.values))))
    for a in range(len(mean)):
        for b in range(len(mean.columns)):
            value = mean.values[a, b]
            if value == value:
                ax.text(b, a, f"{value:.2f}", ha="center", va="center", color="white", fontsize=8)
    ax.set_xticks(range(len(mean.columns)), [str(c) for c in mean.columns])
    ax.set_yticks(range(len(mean)), [str(i) for i in mean.index])
    ax.set_xlabel("gallery generation j")
    ax.set_ylabel("query generation i")
    ax.set_title(f"C[i][j], R@1: {g.label}", fontsize=8)
    fig.colorbar(image, ax=ax)
    return save_figure(fig, path)


def plot_cost(groups: list[Group], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for g in groups:
        mean, _ = spread([per_session(r) for r in g.runs])
        forwards, _ = spread([cumulative_forwards(r.result.costs).to_frame() for r in g.runs])
        if "all" in mean.columns:
            ax.plot(forwards.iloc[:, 0].loc[mean.index], mean["all"], marker="o", label=g.label)
    ax.set_xlabel("cumulative backbone forwards (train, index, backfill, evaluate)")
    ax.set_ylabel("R@1, all seen classes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_backfill_curves(runs: list[LoadedRun], path: Path) -> Path | None:
    curves = [(r, r.result.run_dir / "backfill_curve.parquet") for r in runs]
    curves = [(r, read_parquet(p)) for r, p in curves if p.is_file()]
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for run, curve in curves:
        c = curve[(curve.metric == "recall@1") & (curve.subset == "all")]
        ax.plot(c.fraction, c.value, marker="o", label=f"{run.label}, area {c.value.mean():.3f}")
    ax.set_xlabel("fraction of the stale gallery backfilled")
    ax.set_ylabel("R@1, all seen classes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


# -- the whole report ----------------------------------------------------------------------


def default_out(paths: list[Path]) -> Path:
    """`report/` inside the run for one run; next to the runs (their common folder) for several."""
    paths = [Path(p).resolve() for p in paths]
    if len(paths) == 1:
        return paths[0] / "report"
    common = Path(*Path(paths[0]).parts[: _common_depth(paths)])
    return common / "report"


def _common_depth(paths: list[Path]) -> int:
    depth = 0
    for parts in zip(*[p.parts for p in paths]):
        if len(set(parts)) > 1:
            break
        depth += 1
    return depth


def build_report(
    paths: list[str | Path], *, out: str | Path | None = None, paragon: str | Path | None = None, html: bool = False
) -> Report:
    """Load the runs, build the tables, write the plots (and update_gain.parquet with a paragon) into `out`;
    `html`: also report.html, one self-contained page of all of it."""
    from cvstream.simulator.outputs import write_parquet

    runs = load(paths)
    groups = group(runs)
    out = Path(out) if out is not None else default_out([Path(p) for p in paths])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report folder {out}: {exc}") from None
    report = Report()
    for g in groups:
        report.tables.append(group_recall_table(g))
        if (matrix := matrix_table(g)) is not None:
            report.tables.append(matrix)
        report.tables.append(costs_table(g))
    report.files.append(plot_recall(groups, out / "recall_old_new.png"))
    for number, g in enumerate(groups):
        name = "compatibility.png" if len(groups) == 1 else f"compatibility-{number}.png"
        if (file := plot_matrix(g, out / name)) is not None:
            report.files.append(file)
    report.files.append(plot_cost(groups, out / "accuracy_vs_forwards.png"))
    if (file := plot_backfill_curves(runs, out / "backfill_curve.png")) is not None:
        report.files.append(file)
    _timeline_parts(runs, out, report)
    if paragon is not None:
        reference = load([paragon])[0]
        gains = pd.concat([update_gains(r, reference) for r in runs], ignore_index=True)
        report.tables.append(gains_table(gains))
        write_parquet(out / "update_gain.parquet", gains)
        report.files.append(out / "update_gain.parquet")
    if html:  # last: the page embeds every table and plot above
        from cvstream.reporting.html_report import write_html

        report.files.append(write_html(report, runs, out / "report.html"))
    return report


def _timeline_parts(runs: list[LoadedRun], out: Path, report: Report) -> None:
    """Runs with a service timeline (timeline.parquet): their summary table and quality over simulated time."""
    from cvstream.reporting.timeline_report import plot_timeline, summary_table

    with_timeline = [r for r in runs if r.result.timeline is not None and "timeline" in r.info]  # load_run read timeline.parquet
    if not with_timeline:
        return
    labels = [r.label if len(with_timeline) == 1 else f"{r.label} {Path(r.result.run_dir).name}" for r in with_timeline]
    report.tables.append(summary_table({label: r.info["timeline"] for label, r in zip(labels, with_timeline)}, title="service timeline"))
    frames = {label: r.result.timeline for label, r in zip(labels, with_timeline)}
    report.files.append(plot_timeline(frames, out / "timeline.png"))
