"""Sweeps: scenarios x seeds x methods x backfill policies (x any key), one run each.

A sweep file lists the values of each axis; every combination becomes one run, described
by `--set` overrides of its scenario file. Runs go one at a time on this machine, or as
Ray tasks when `ray` is importable (the optional extra `ray`). Whatever ran them, the
driver writes one Parquet dataset per table, `metrics/` and `costs/` (a file per run,
with the sweep's columns), and `runs.parquet`, so pandas, DuckDB or Polars read a sweep
as one table. Runs whose files exist are skipped, so an interrupted sweep continues.
`summary.parquet` holds one row per cell (every axis but the seed): each figure's mean over the
cell's completed seeds with its 95% interval (`cvstream.studies.intervals`).
Plugin files (`plugins=`, `cvstream sweep --plugin FILE`) travel with every task by path and
are loaded in the worker before its scenario is read, so a Ray worker needs to see the file.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cvstream.errors import ScenarioError, UserError
from cvstream.reporting.study_report import interval_cell, seeds_note
from cvstream.reporting.tables import Column, ReportTable, cell
from cvstream.simulator.outputs import write_json, write_parquet
from cvstream.studies.compare import quality_figures
from cvstream.studies.intervals import summarize_seeds

AXES = ("scenario", "seed", "method", "backfill")
SWEEP_FIGURES = ["ar@1", "last_r@1_old", "last_r@1_new", "last_r@1_all", "last_map@r", "seconds"]  # per run, then per cell over seeds


class SweepSpec(BaseModel):
    """A sweep file: each list is an axis; a missing axis keeps the scenario's own value."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    scenarios: list[str] = Field(..., min_length=1, description="scenario files, relative to the sweep file")
    seeds: list[int] | None = Field(None, min_length=1)
    methods: list[str | dict[str, Any]] | None = Field(None, min_length=1, description="method names, or method sections")
    backfill: list[str | dict[str, Any]] | None = Field(None, min_length=1, description="backfill policies, or backfill sections")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="any other key path -> its values")
    set: list[str] = Field(default_factory=list, description="KEY.PATH=VALUE overrides applied to every run")
    engine: Literal["auto", "local", "ray"] = Field("auto", description="auto: Ray tasks when ray is importable, else local")
    ray_address: str | None = Field(None, description="an existing Ray cluster (default: start or join a local one)")
    cpus_per_run: float = Field(1.0, gt=0, description="Ray: CPUs reserved by each run")


@dataclass(frozen=True)
class SweepRun:
    """One combination: its scenario file, its overrides and the labels it gets in the results."""

    index: int
    scenario: str
    overrides: tuple[str, ...]
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"run-{self.index:04d}"


@dataclass(frozen=True)
class RunTask:
    """What a worker needs to run one combination (plain values: it travels to Ray workers)."""

    run: SweepRun
    run_dir: str
    data_root: str | None
    plugins: tuple[str, ...] = ()  # plugin files (absolute paths), loaded by the worker first
    store: str | None = None  # the generation store's folder, shared by every worker that can reach it


def load_sweep(path: str | Path) -> tuple[SweepSpec, list[SweepRun]]:
    """Read and check a sweep file, and every run's scenario with its overrides, before anything runs."""
    path = Path(path)
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError("file not found", source=source) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ScenarioError(f"cannot read the sweep file ({exc})", source=source) from None
    if not isinstance(data, dict):
        raise ScenarioError("the top level must be a mapping (name, scenarios, seeds, methods, backfill, grid, set)", source=source)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        from cvstream.scenario import _scenario_error

        raise _scenario_error(exc, source=source, model=SweepSpec) from None
    runs = expand(spec, base=path.parent)
    _check_runs(runs, source=source)
    return spec, runs


def expand(spec: SweepSpec, *, base: Path) -> list[SweepRun]:
    """Every combination of the axes, in a fixed order (scenario, seed, method, backfill, grid keys)."""
    axes: list[list[tuple[str, str, str]]] = [  # per axis: (axis name, label, override)
        [("seed", str(seed), f"seed={seed}") for seed in spec.seeds or []],
        [("method", _label(m, "name"), f"method={_yaml(m)}") for m in spec.methods or []],
        [("backfill", _label(b, "policy"), f"backfill={_yaml(b if isinstance(b, dict) else {'policy': b})}") for b in spec.backfill or []],
        *[[(key, _yaml(v), f"{key}={_yaml(v)}") for v in values] for key, values in spec.grid.items()],
    ]
    runs = []
    combos = itertools.product(spec.scenarios, *[axis for axis in axes if axis])
    for index, (scenario, *combo) in enumerate(combos):
        labels = {"scenario": Path(scenario).stem, **{name: label for name, label, _ in combo}}
        overrides = tuple(spec.set) + tuple(override for _, _, override in combo)
        runs.append(SweepRun(index=index, scenario=str((base / scenario).resolve()), overrides=overrides, labels=labels))
    return runs


def _label(value: str | dict, key: str) -> str:
    if isinstance(value, str):
        return value
    rest = ",".join(f"{k}={_yaml(v)}" for k, v in value.items() if k != key)
    return f"{value.get(key, '?')}({rest})" if rest else str(value.get(key, "?"))


def _yaml(value: Any) -> str:
    """A value as one line of YAML (flow style), as `--set` parses it."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _check_runs(runs: list[SweepRun], *, source: str) -> None:
    from cvstream.scenario import Scenario

    stems = [Path(r.scenario).stem for r in runs]
    if len(set(stems)) != len({r.scenario for r in runs}):
        raise ScenarioError("two scenario files share a file name; rename one so that results can tell them apart", source=source, key_path="scenarios")
    for run in runs:
        try:
            Scenario.from_yaml(run.scenario, overrides=run.overrides)
        except UserError as exc:
            raise UserError(f"{source}: run {run.index} ({_describe(run)}) is not a valid scenario: {exc}") from None


def _describe(run: SweepRun) -> str:
    return ", ".join(f"{k} {v}" for k, v in run.labels.items())


# -- running --------------------------------------------------------------------------------


def execute(task: RunTask) -> dict[str, Any]:
    """Run one combination to its end; the result's tables come back as DataFrames (or the error)."""
    from cvstream.plugins import load_plugins
    from cvstream.scenario import Scenario
    from cvstream.simulator import Simulator
    from cvstream.timeline import run

    clock = time.perf_counter()
    try:
        load_plugins(task.plugins)  # a Ray worker is a fresh process: what the driver loaded, it loads too
        scenario = Scenario.from_yaml(task.run.scenario, overrides=task.run.overrides)
        result = run(Simulator(scenario, out_dir=task.run_dir, data_root=task.data_root, store=task.store))
    except Exception as exc:  # one failed run must not lose the others; its error is recorded
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - clock}
    return {
        "status": result.status, "error": "", "seconds": time.perf_counter() - clock, "run_id": result.run_id,
        "scenario_name": scenario.name, "metrics": result.metrics, "costs": result.costs,
    }


def _local(tasks: list[RunTask]) -> Iterator[tuple[RunTask, dict]]:
    for task in tasks:
        yield task, execute(task)


def _ray(tasks: list[RunTask], spec: SweepSpec) -> Iterator[tuple[RunTask, dict]]:
    import ray

    if not ray.is_initialized():
        ray.init(address=spec.ray_address, include_dashboard=False, log_to_driver=False)
    # A run that kills its worker (out of memory, a crash in native code) would kill the next one too: it is
    # recorded as failed at once, and a rerun of the sweep tries it again.
    remote = ray.remote(num_cpus=spec.cpus_per_run, max_retries=0)(execute)
    submitted = time.perf_counter()
    pending = {remote.remote(task): task for task in tasks}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        task = pending.pop(done[0])
        try:
            outcome = ray.get(done[0])
        except ray.exceptions.RayError as exc:  # the task never returned: its worker died, or Ray lost it
            first_line = (str(exc).strip().splitlines() or [""])[0]
            outcome = {"status": "failed", "error": f"{type(exc).__name__}: {first_line}", "seconds": time.perf_counter() - submitted}
        yield task, outcome


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def choose_engine(requested: str) -> str:
    if requested == "ray" and not ray_available():
        raise UserError("engine ray was asked for, but ray is not installed (pip install 'cvstream[ray]'), or use engine local")
    if requested == "auto":
        return "ray" if ray_available() else "local"
    return requested


@dataclass
class SweepResult:
    out_dir: Path
    engine: str
    runs: pd.DataFrame  # one row per combination: labels, status, seconds, its figures, run folder
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per cell: figures over its seeds, with intervals

    @property
    def failed(self) -> pd.DataFrame:
        return self.runs[self.runs.status != "completed"]


def run_sweep(
    path: str | Path,
    *,
    out_dir: str | Path,
    data_root: str | Path | None = None,
    engine: str | None = None,
    on_run: Callable[[SweepRun, dict], None] | None = None,
    plugins: list[str | Path] | tuple[str | Path, ...] = (),
    store: str | Path | None = None,
) -> SweepResult:
    """Run every combination not already in `out_dir`; write metrics/, costs/ and runs.parquet.
    `plugins`: plugin files, loaded here (before the runs' scenarios are checked) and in every task. `store`: the
    generation store's folder (its workers must share it): sessions that runs train alike are trained once."""
    from cvstream.plugins import load_plugins

    plugin_files = tuple(str(Path(p).expanduser().resolve()) for p in plugins)
    load_plugins(plugin_files)
    spec, runs = load_sweep(path)
    chosen = choose_engine(engine or spec.engine)
    out = Path(out_dir)
    for folder in ("runs", "metrics", "costs"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", {"sweep": spec.model_dump(mode="json"), "file": str(Path(path).resolve()), "plugins": list(plugin_files),
                                    "runs": [{"index": r.index, "scenario": r.scenario, "overrides": list(r.overrides), "labels": r.labels} for r in runs]})
    previous = _read_runs(out)
    rows = {int(r["run_index"]): r for r in previous if r["status"] == "completed" and _has_files(out, int(r["run_index"]))}
    todo = [RunTask(run=r, run_dir=str(out / "runs" / _folder(r)), data_root=str(data_root) if data_root else None, plugins=plugin_files,
                    store=str(Path(store).resolve()) if store is not None else None)
            for r in runs if r.index not in rows]
    for task in todo:
        _clear(Path(task.run_dir))  # a run that died half-way starts again from its beginning
    stream = _ray(todo, spec) if chosen == "ray" else _local(todo)
    for task, outcome in stream:
        run = task.run
        row = {"sweep": spec.name, "run_index": run.index, **_label_columns(spec, run), "status": outcome["status"],
               "error": outcome["error"], "seconds": float(outcome["seconds"]), "run_dir": task.run_dir,
               "run_id": outcome.get("run_id", ""), "overrides": json.dumps(list(run.overrides))}
        if outcome["status"] == "completed":
            row.update(quality_figures(outcome["metrics"]))
            columns = {"sweep": spec.name, "run_index": run.index, **_label_columns(spec, run)}
            for name in ("metrics", "costs"):
                frame = outcome[name].assign(**columns)
                write_parquet(out / name / f"{run.key}.parquet", frame[list(columns) + [c for c in outcome[name].columns]])
        rows[run.index] = row
        write_parquet(out / "runs.parquet", _runs_frame(rows))
        if on_run is not None:
            on_run(run, row)
    for index, row in rows.items():  # a run completed by an older version has no figures in runs.parquet: from its metrics
        if row["status"] == "completed" and SWEEP_FIGURES[0] not in row:
            row.update(quality_figures(pd.read_parquet(out / "metrics" / f"run-{index:04d}.parquet")))
    frame = _runs_frame(rows)
    write_parquet(out / "runs.parquet", frame)
    summary = summarize_cells(frame, cells=[_column(name) for name in (*AXES, *spec.grid) if name != "seed"])
    write_parquet(out / "summary.parquet", summary)
    return SweepResult(out_dir=out, engine=chosen, runs=frame, summary=summary)


def summarize_cells(runs: pd.DataFrame, *, cells: list[str]) -> pd.DataFrame:
    """One row per cell (a combination of `cells`, every axis but the seed): the figures' means over the cell's completed
    runs, each with its 95% interval, and `seeds`, how many runs it averages."""
    completed = runs[runs.status == "completed"] if len(runs) else runs
    if completed.empty:
        return pd.DataFrame(columns=[*cells, *[f"{f}{end}" for f in SWEEP_FIGURES for end in ("", "_low", "_high")], "seeds"])
    return summarize_seeds(completed, keys=cells, figures=SWEEP_FIGURES)


def summary_table(summary: pd.DataFrame, *, title: str) -> ReportTable:
    """The sweep's cells, one row each: the axes that vary between cells, then each figure ± the half-width of its
    interval over the cell's seeds."""
    figures = [("ar@1", "AR@1", "{:.3f}"), ("last_r@1_old", "R@1 old", "{:.3f}"), ("last_r@1_new", "R@1 new", "{:.3f}"),
               ("last_r@1_all", "R@1 all", "{:.3f}"), ("last_map@r", "mAP@R", "{:.3f}"), ("seconds", "seconds", "{:.1f}")]
    labels = list(summary.columns[: list(summary.columns).index(SWEEP_FIGURES[0])])
    axes = [c for c in labels if summary[c].nunique() > 1] or labels[:1]
    table = ReportTable(title, [Column(a, numeric=False) for a in axes] + [Column(h) for _, h, _ in figures] + [Column("seeds")])
    for row in summary.to_dict("records"):
        table.add_row(*[str(row[a]) for a in axes], *[interval_cell(row, key, form) for key, _, form in figures], cell(row["seeds"]))
    table.caption = seeds_note(summary.seeds) if len(summary) else None
    return table


def _label_columns(spec: SweepSpec, run: SweepRun) -> dict[str, str]:
    """Every axis as a string column (the same schema in every file of the dataset)."""
    return {_column(name): run.labels.get(name, "") for name in (*AXES, *spec.grid)}


def _column(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", key)


def _folder(run: SweepRun) -> str:
    label = "-".join(run.labels.values())
    return f"{run.index:04d}-" + re.sub(r"[^A-Za-z0-9_.=,\-]", "_", label)[:80]


def _has_files(out: Path, index: int) -> bool:
    return all((out / name / f"run-{index:04d}.parquet").is_file() for name in ("metrics", "costs"))


def _read_runs(out: Path) -> list[dict]:
    file = out / "runs.parquet"
    return pd.read_parquet(file).to_dict("records") if file.is_file() else []


def _runs_frame(rows: dict[int, dict]) -> pd.DataFrame:
    return pd.DataFrame([rows[k] for k in sorted(rows)])


def _clear(run_dir: Path) -> None:
    if run_dir.exists():
        shutil.rmtree(run_dir)


def read_results(out_dir: str | Path, table: str = "metrics") -> pd.DataFrame:
    """One table of a sweep, all runs together (what pandas makes of the Parquet dataset)."""
    folder = Path(out_dir) / table
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        raise UserError(f"{folder}: no results (has the sweep run?)")
    return pd.read_parquet(folder)
