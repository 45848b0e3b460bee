"""The run's tables as rows, with their schemas: what the writer saves and `RunResult` holds.

Rows of a session in progress are pending; `commit` at the end of a session makes them part
of the run, and a checkpoint records how many rows each table had then. A metric row arrives as a
`MetricRow` (`cvstream.evaluation.rows`, which says what produces each) and becomes the table's dict here.
"""

from __future__ import annotations

import dataclasses
import json

import pandas as pd

from cvstream.evaluation.rows import COLUMNS as METRIC_COLUMNS
from cvstream.evaluation.rows import MetricRow

COLUMNS = {
    "metrics": ["run_id", *METRIC_COLUMNS],
    "costs": ["run_id", "session", "phase", "backbone_forwards", "transform_forwards", "items", "seconds", "backbone_flops", "reused"],
    "events": ["run_id", "event_index", "session", "kind", "generation", "started_at", "seconds", "detail"],
}
INTEGER_COLUMNS = {"session", "query_generation", "n_queries", "event_index", "generation", "backbone_forwards", "transform_forwards", "items",
                   "backbone_flops"}
# Columns added after runs were already written, and the value their older rows get when such a run resumes.
ADDED_COLUMNS = {"costs": {"backbone_flops": 0, "reused": False}}  # 0: not counted; False: nothing was reused then


class Tables:
    def __init__(self):
        self.rows: dict[str, list[dict]] = {name: [] for name in COLUMNS}
        self.committed = {name: 0 for name in COLUMNS}

    def add_event(self, run_id: str, event, outcome, *, started_at: str) -> None:
        """The step's events row, its costs row (if it is billed to a phase) and its metric rows."""
        self.rows["events"].append(
            {"run_id": run_id, "event_index": len(self.rows["events"]), "session": event.session, "kind": event.kind,
             "generation": outcome.generation, "started_at": started_at, "seconds": outcome.seconds,
             "detail": json.dumps(outcome.detail or {}, sort_keys=True, default=str)}
        )
        if outcome.cost_phase:
            self.rows["costs"].append(
                {"run_id": run_id, "session": event.session, "phase": outcome.cost_phase,
                 "backbone_forwards": outcome.backbone_forwards, "transform_forwards": outcome.transform_forwards,
                 "items": outcome.items, "seconds": outcome.seconds, "backbone_flops": outcome.backbone_flops,
                 "reused": outcome.reused}
            )
        for row in outcome.metrics or []:
            self.add_metric(run_id, row)

    def add_metric(self, run_id: str, row: MetricRow) -> None:
        self.rows["metrics"].append({"run_id": run_id, **dataclasses.asdict(row)})

    def commit(self) -> None:
        self.committed = {name: len(rows) for name, rows in self.rows.items()}

    def restore(self, rows: dict[str, list[dict]]) -> None:
        """Continue a resumed run after the rows of its completed sessions."""
        self.rows = {name: [{**ADDED_COLUMNS.get(name, {}), **row} for row in rows.get(name, [])] for name in COLUMNS}
        self.commit()

    def frame(self, name: str, *, committed_only: bool = True) -> pd.DataFrame:
        rows = self.rows[name][: self.committed[name]] if committed_only else self.rows[name]
        frame = pd.DataFrame(rows, columns=COLUMNS[name])
        return frame.astype({c: "int64" for c in COLUMNS[name] if c in INTEGER_COLUMNS})
