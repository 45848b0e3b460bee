"""`cvstream report --html`: the report as one self-contained page, `report.html`, that opens offline.

Everything is inside the file: the plots as base64 data URIs, the report's tables as HTML
tables, and per run its metrics per session, its costs, its scenario (from run.json) and,
when the run folder has a `timeline.parquet`, a summary of it. No script, font or style
sheet is fetched from anywhere.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml

from cvstream.reporting.tables import ReportTable, frame_table

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2330;
       background: #fff; margin: 0 auto; padding: 24px 32px 48px; max-width: 1180px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #d8dde6; }
h3 { font-size: 16px; margin: 22px 0 8px; }
nav a { margin-right: 14px; color: #2457a6; text-decoration: none; }
.meta { color: #5a6272; margin: 0 0 10px; }
.figures { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0; padding: 8px; border: 1px solid #d8dde6; border-radius: 6px; background: #fafbfd; max-width: 100%; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 13px; color: #5a6272; margin-top: 4px; }
.scroll { overflow-x: auto; margin-bottom: 14px; }
table { border-collapse: collapse; font-size: 13.5px; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 0 0 6px; white-space: nowrap; }
.note { font-size: 12.5px; color: #5a6272; margin: 2px 0 0; }
th, td { border: 1px solid #d8dde6; padding: 4px 9px; white-space: nowrap; }
th { background: #eef1f6; font-weight: 600; }
tbody tr:nth-child(even) td { background: #f7f8fb; }
tr.strong td { font-weight: 700; }
td.num, th.num { text-align: right; }
pre { background: #f4f6f9; border: 1px solid #d8dde6; border-radius: 6px; padding: 10px 14px; font-size: 13px;
      overflow-x: auto; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: 13.5px; }
dt { color: #5a6272; }
dd { margin: 0; }
"""


def write_html(report, runs, path: Path) -> Path:
    """Write `report` (its tables and PNG files) and the runs' own tables as one page at `path`."""
    from cvstream.simulator.outputs import atomic_write_bytes

    atomic_write_bytes(Path(path), render(report, runs).encode("utf-8"))
    return Path(path)


def render(report, runs) -> str:
    """The page, as text: plots, the report's tables, then per run its metrics, costs, timeline and scenario."""
    images = [Path(f) for f in report.files if Path(f).suffix.lower() == ".png" and Path(f).is_file()]
    title = "cvstream report: " + ", ".join(r.label for r in runs)
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{len(runs)} run{"s" if len(runs) != 1 else ""}, written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</p>',
        '<nav><a href="#plots">plots</a><a href="#tables">tables</a>'
        + "".join(f'<a href="#run-{i}">{_e(r.result.run_id)}</a>' for i, r in enumerate(runs)) + "</nav>",
        '<h2 id="plots">Plots</h2>',
        '<div class="figures">' + "".join(_figure(p) for p in images) + "</div>" if images else "<p>No plots.</p>",
        '<h2 id="tables">Tables</h2>',
        *[table_html(t) for t in report.tables],
    ]
    for number, run in enumerate(runs):
        body.append(_run_section(run, number))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(path.name)}"><figcaption>{_e(path.name)}</figcaption></figure>'


def table_html(table: ReportTable) -> str:
    """A report table (what the terminal shows) as an HTML table with its title and caption."""
    classes = ["num" if column.numeric else "" for column in table.columns]
    head = "".join(f'<th class="{c}">{_e(column.header)}</th>' for column, c in zip(table.columns, classes))
    rows = []
    for cells, strong in zip(table.rows, table.strong):
        tds = "".join(f'<td class="{c}">{_e(text)}</td>' for text, c in zip(cells, classes))
        emphasis = ' class="strong"' if strong else ""
        rows.append(f"<tr{emphasis}>{tds}</tr>")
    caption = f"<caption>{_e(table.title)}</caption>" if table.title else ""
    note = f'<p class="note">{_e(table.caption)}</p>' if table.caption else ""
    return f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>{note}</div>'


def frame_html(frame: pd.DataFrame, *, title: str, index: bool = False, decimals: int | None = None) -> str:
    """A DataFrame as an HTML table (`frame_table`: numbers right-aligned, whole numbers with separators, others to 4
    significant digits or `decimals` places)."""
    return table_html(frame_table(frame, title=title, index=index, decimals=decimals))


def metrics_per_session(metrics: pd.DataFrame) -> pd.DataFrame:
    """Against the mixed gallery: one row per session and subset (old, new, all), one column per metric."""
    m = metrics[(metrics.gallery_view == "mixed") & metrics.subset.isin(["old", "new", "all"])]
    if m.empty:
        return pd.DataFrame()
    table = m.pivot_table(index=["session", "subset"], columns="metric", values="value", aggfunc="first")
    order = {"old": 0, "new": 1, "all": 2}
    table = table.sort_index(key=lambda level: level.map(order) if level.name == "subset" else level)
    table.columns.name = None
    return table[sorted(table.columns, key=_metric_order)]


def _metric_order(name: str):
    """recall@1, recall@2, ..., map@r first, then the others by name (ar@2 before ar@10)."""
    family, _, k = name.partition("@")
    rank = {"recall": 0, "map": 1}.get(family, 2)
    return rank, family, int(k) if k.isdigit() else -1, k


def timeline_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Any table, one row per column: its type and, for numbers, first, last, min, mean and max."""
    rows = []
    for column in frame.columns:
        values = frame[column]
        row = {"column": column, "type": str(values.dtype)}
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) and len(values):
            numbers = values.astype(float)
            row.update(first=numbers.iloc[0], last=numbers.iloc[-1], min=numbers.min(), mean=numbers.mean(), max=numbers.max())
        else:
            distinct = values.astype(str).unique()
            row["values"] = ", ".join(distinct[:6]) + (f", ... ({len(distinct)} distinct)" if len(distinct) > 6 else "")
        rows.append(row)
    return pd.DataFrame(rows, columns=["column", "type", "first", "last", "min", "mean", "max", "values"])


def _run_section(run, number: int) -> str:
    info, result = run.info, run.result
    facts = {
        "run id": result.run_id, "status": info.get("status"), "folder": Path(result.run_dir).resolve(),
        "sessions": f"{info.get('completed_sessions', '?')} of {info.get('sessions', '?')} completed",
        "started": info.get("started_at"), "ended": info.get("ended_at"), "device": info.get("device"),
        "scenario hash": info.get("scenario_hash"), "git commit": info.get("git_commit"),
        "versions": ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items()),
    }
    parts = [
        f'<h2 id="run-{number}">Run {_e(result.run_id)}: {_e(run.label)}</h2>',
        "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts.items() if v not in (None, "")) + "</dl>",
    ]
    per_session = metrics_per_session(result.metrics)
    if not per_session.empty:
        parts.append(frame_html(per_session, title="metrics per session against the mixed gallery (metrics.parquet)", index=True, decimals=3))
    if not result.costs.empty:
        costs = result.costs.drop(columns=[c for c in ("run_id",) if c in result.costs.columns])
        parts.append(frame_html(costs, title="costs per session and phase (costs.parquet)"))
    timeline = result.timeline  # load_run read timeline.parquet where the run has one
    if timeline is not None:
        parts.append("<h3>Service timeline</h3>")
        parts.append(frame_html(timeline_summary(timeline), title=f"timeline.parquet: {len(timeline):,} rows x {len(timeline.columns)} columns"))
    parts.append("<h3>Scenario (run.json)</h3>")
    parts.append(f"<pre>{_e(yaml.safe_dump(info.get('scenario', {}), sort_keys=False))}</pre>")
    return "\n".join(parts)
