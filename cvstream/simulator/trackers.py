"""Experiment trackers (`output.trackers: [tensorboard, mlflow]`): the run's rows, also where people already look.

The hook sends each session's committed metric and cost rows, the same rows the writer saves
to Parquet, once the session ends, and the scenario when the run starts. A tracker is one
class in `TRACKERS` with `log_scenario(scenario)`, `log_rows(metrics, costs, session=t)` and
`close(status)`, built with the run's folder, its id and the experiment (scenario) name, and
`first_session` where its constructor takes it. A
tracker that cannot write (its library is missing, a write fails) is reported once on stderr
and dropped: the run goes on.

Resuming: a session whose rows were sent but whose checkpoint was not written (the run was
killed in between) runs again, and its rows are sent again. TensorBoard then hides the earlier
events from that session on (`purge_step`), so it shows the rerun's; MLflow, which cannot take
points back, keeps the first ones (the same metrics, the session being seeded; its own timings):
the run's tag `cvstream.logged_through` says the last session sent, and a session at or before
it is not sent twice.

Names: TensorBoard tags are `<metric>/<gallery view>/<subset>` (`recall@1/mixed/all`) and
`costs/<phase>/<column>`, with the session as the step. MLflow keys are the same with `@`
written `_at_` and any other character MLflow refuses written `_` (`recall_at_1/mixed/all`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cvstream.registry import Registry
from cvstream.simulator.hooks import Hook

TRACKERS: Registry = Registry("tracker")

COST_COLUMNS = ("backbone_forwards", "transform_forwards", "items", "seconds", "backbone_flops")
EXTRA = "pip install 'cvstream[trackers]'"


def metric_tag(row) -> str:
    return f"{row.metric}/{row.gallery_view}/{row.subset}"


def cost_rows(costs: pd.DataFrame):
    """(tag, session, value) of every cost row and column."""
    for row in costs.itertuples(index=False):
        for column in COST_COLUMNS:
            if hasattr(row, column):
                yield f"costs/{row.phase}/{column}", int(row.session), float(getattr(row, column))


def scenario_yaml(scenario: dict) -> str:
    return yaml.safe_dump(scenario, sort_keys=False)


@TRACKERS.register("tensorboard")
class TensorBoardTracker:
    """Event files in RUN_DIR/tensorboard (`tensorboard --logdir RUN_DIR/tensorboard`)."""

    def __init__(self, *, run_dir: Path, run_id: str, experiment: str, first_session: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(f"tensorboard is not installed ({EXTRA})") from None
        # Resumed at `first_session`: events of that session on, written before the run stopped, are hidden.
        purge = first_session if first_session > 0 else None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=purge)

    def log_scenario(self, scenario: dict) -> None:
        text = "\n".join("    " + line for line in scenario_yaml(scenario).splitlines())  # a Markdown code block
        self.writer.add_text("scenario", text, global_step=0)
        self.writer.flush()

    def log_rows(self, metrics: pd.DataFrame, costs: pd.DataFrame, *, session: int) -> None:
        for row in metrics.itertuples(index=False):
            self.writer.add_scalar(metric_tag(row), float(row.value), global_step=int(row.session))
        for tag, step, value in cost_rows(costs):
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


_MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def mlflow_key(tag: str) -> str:
    """A TensorBoard tag as an MLflow metric key (MLflow takes letters, digits, `_ - . / :` and spaces)."""
    return re.sub(r"[^\w\-./: ]", "_", tag.replace("@", "_at_"))


@contextlib.contextmanager
def _quiet(logger: str):
    """MLflow logs its database set-up at INFO; a run prints no wall of logs."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


@TRACKERS.register("mlflow")
class MlflowTracker:
    """One MLflow run per cvstream run, in the experiment named after the scenario.

    The store is `$MLFLOW_TRACKING_URI` where set, else a local one in RUN_DIR/mlruns: an SQLite
    database `mlflow.db` (MLflow 3 refuses new plain-file stores) with the artifacts beside it
    (`mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlruns/mlflow.db`).
    """

    LOGGED = "cvstream.logged_through"

    def __init__(self, *, run_dir: Path, run_id: str, experiment: str, first_session: int = 0):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ImportError(f"mlflow is not installed ({EXTRA})") from None
        uri, artifacts = os.environ.get("MLFLOW_TRACKING_URI"), None
        if not uri:
            root = (Path(run_dir) / "mlruns").resolve()
            root.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()
        with _quiet("mlflow"), _quiet("alembic"):
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment, artifact_location=artifacts)
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`cvstream.run_id` = '{run_id}'", max_results=1)
        self.logged_through = -1
        if found:  # a resumed run continues its MLflow run
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.logged_through = int(found[0].data.tags.get(self.LOGGED, -1))
        else:
            run = self.client.create_run(experiment_id, run_name=run_id, tags={"cvstream.run_id": run_id, "cvstream.run_dir": str(run_dir)})
            self.run_id = run.info.run_id

    def log_scenario(self, scenario: dict) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        params = [Param(key, value) for key, value in _flatten(scenario).items() if key not in existing]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        self.client.log_text(self.run_id, scenario_yaml(scenario), "scenario.yaml")

    def log_rows(self, metrics: pd.DataFrame, costs: pd.DataFrame, *, session: int) -> None:
        from mlflow.entities import Metric

        if session <= self.logged_through:  # sent before the run stopped, and run again since
            return
        stamp = int(time.time() * 1000)
        rows = [Metric(mlflow_key(metric_tag(r)), float(r.value), stamp, int(r.session)) for r in metrics.itertuples(index=False)]
        rows += [Metric(mlflow_key(tag), value, stamp, step) for tag, step, value in cost_rows(costs)]
        for start in range(0, len(rows), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=rows[start:start + 1000])
        self.client.set_tag(self.run_id, self.LOGGED, str(session))
        self.logged_through = session

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=_MLFLOW_STATUS.get(status, "FINISHED"))


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested scenario as MLflow params: `dataset.name` -> `synthetic`; lists as JSON."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    text = value if isinstance(value, str) else json.dumps(value)
    return {mlflow_key(prefix[:-1]): text[:6000]}


class TrackerHook(Hook):
    """Sends what the writer saves to every tracker named in `output.trackers`; a failing tracker is warned about once and dropped."""

    def __init__(self, names: list[str] | tuple[str, ...]):
        self.names = list(names)
        self.trackers: dict[str, Any] = {}
        self.sent: dict[str, int] = {}

    def before_run(self, sim) -> None:
        self.sent = {name: sim.tables.committed[name] for name in ("metrics", "costs")}  # a resumed run sent its old rows already
        scenario = sim.scenario.to_dict(complete=True)
        first = {"first_session": sim.state.next_session}
        for name in self.names:
            try:
                cls = TRACKERS.get(name)
                takes_first = "first_session" in inspect.signature(cls).parameters  # plug-in trackers may not
                tracker = cls(run_dir=sim.run_dir, run_id=sim.run_id, experiment=sim.scenario.name, **(first if takes_first else {}))
                tracker.log_scenario(scenario)
            except Exception as exc:
                self._warn(name, exc)
                continue
            self.trackers[name] = tracker

    def after_session(self, sim, result) -> None:
        frames = {name: sim.tables.frame(name) for name in ("metrics", "costs")}
        new = {name: frame.iloc[self.sent[name]:] for name, frame in frames.items()}
        self.sent = {name: len(frame) for name, frame in frames.items()}
        self._each("log_rows", new["metrics"], new["costs"], session=result.session)

    def after_run(self, sim, status: str, record: dict) -> None:
        self._each("close", status)
        self.trackers = {}

    def _each(self, method: str, *args, **kwargs) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, method)(*args, **kwargs)
            except Exception as exc:
                self._warn(name, exc)
                del self.trackers[name]

    @staticmethod
    def _warn(name: str, exc: Exception) -> None:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(
            f"[yellow]warning:[/] tracker {name} stopped ({escape(f'{type(exc).__name__}: {exc}')}); the run goes on without it",
            highlight=False, soft_wrap=True,
        )
