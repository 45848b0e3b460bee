"""Lifecycle hooks: logging, progress and custom measurements plug in here, never into the loop."""

from __future__ import annotations

import json

import pandas as pd


class Hook:
    def before_run(self, sim) -> None: ...

    def before_event(self, sim, event) -> None: ...

    def after_event(self, sim, event, outcome) -> None: ...

    def on_train_step(self, sim, step: int, total: int, terms: dict[str, float]) -> None: ...

    def after_run(self, sim, status: str) -> None: ...


METRIC_COLUMNS = ["run_id", "session", "query_generation", "gallery_view", "subset", "metric", "value", "n_queries"]
COST_COLUMNS = ["run_id", "session", "phase", "backbone_forwards", "transform_forwards", "items", "seconds"]
EVENT_COLUMNS = ["run_id", "event_index", "session", "kind", "generation", "started_at", "seconds", "detail"]


class Recorder(Hook):
    """Turns outcomes into table rows; `committed` holds only the rows of completed sessions."""

    def __init__(self):
        self.rows = {"metrics": [], "costs": [], "events": []}
        self.committed = {"metrics": 0, "costs": 0, "events": 0}
        self._event_index = 0

    def after_event(self, sim, event, outcome) -> None:
        run_id = sim.run_id
        detail = dict(outcome.detail or {})
        started_at = detail.pop("started_at", None)
        self.rows["events"].append(
            {"run_id": run_id, "event_index": self._event_index, "session": event.session, "kind": event.kind,
             "generation": outcome.generation, "started_at": started_at, "seconds": outcome.seconds,
             "detail": json.dumps(detail, sort_keys=True, default=str)}
        )
        self._event_index += 1
        if outcome.cost_phase:
            self.rows["costs"].append(
                {"run_id": run_id, "session": event.session, "phase": outcome.cost_phase,
                 "backbone_forwards": outcome.backbone_forwards, "transform_forwards": outcome.transform_forwards,
                 "items": outcome.items, "seconds": outcome.seconds}
            )
        for row in outcome.metrics or []:
            self.rows["metrics"].append({"run_id": run_id, **row})
        if event.kind == "session_end":
            self.committed = {name: len(rows) for name, rows in self.rows.items()}

    def restore(self, rows: dict[str, list[dict]]) -> None:
        """Continue a resumed run after the rows of its completed sessions."""
        self.rows = {name: list(rows.get(name, [])) for name in self.rows}
        self.committed = {name: len(r) for name, r in self.rows.items()}
        self._event_index = len(self.rows["events"])

    def table(self, name: str, *, committed_only: bool = True) -> pd.DataFrame:
        columns = {"metrics": METRIC_COLUMNS, "costs": COST_COLUMNS, "events": EVENT_COLUMNS}[name]
        rows = self.rows[name][: self.committed[name]] if committed_only else self.rows[name]
        frame = pd.DataFrame(rows, columns=columns)
        return frame.astype({c: "int64" for c in columns if c in {"session", "query_generation", "n_queries", "event_index",
                                                                     "generation", "backbone_forwards", "transform_forwards", "items"}})

    def result(self, sim):
        from cvstream.simulator.run import RunResult

        return RunResult(
            run_dir=sim.run_dir, run_id=sim.run_id, status=sim.status,
            metrics=self.table("metrics"), costs=self.table("costs"), events=self.table("events"),
            stream=sim.stream.to_frame(), gallery=sim.gallery.metadata(),
        )
