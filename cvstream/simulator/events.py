"""What one step of a session is called, what it produced, and what a whole session produced."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from cvstream.evaluation.rows import MetricRow


@dataclass(frozen=True)
class Event:
    """One step of one session, as hooks see it and events.parquet records it (`kind`: the step's name)."""

    session: int
    kind: str


@dataclass
class Outcome:
    """What a step produced: its generation, its cost, rows for the tables, and files for the writer."""

    generation: int
    seconds: float | None = None  # None: the engine records the step's wall time
    backbone_forwards: int = 0
    transform_forwards: int = 0
    items: int = 0
    backbone_flops: int = 0  # FLOPs per image of the generation that did the work; the engine counts them for billed steps
    cost_phase: str | None = None  # the costs.parquet phase this step is billed to, if any
    reused: bool = False  # the step's work was done by an earlier run and taken from the generation store: billed as it was
    metrics: list[MetricRow] | None = None  # for metrics.parquet
    detail: dict | None = None
    artifacts: dict = field(default_factory=dict)  # for the writer: `backfill_curve` (a DataFrame), `embeddings` (arrays by file)


@dataclass(frozen=True)
class SessionResult:
    """What `Simulator.run_session(t)` returns: the session, the generation it deployed, its costs.parquet rows (one per
    billed step) and its metrics.parquet rows; `model`, a frozen copy of that generation, where the run keeps
    generations (a scenario with a `timeline` section); `artifacts`, the steps' files for the writer."""

    session: int
    generation: int
    costs: tuple[dict, ...]
    metrics: tuple[dict, ...]
    model: torch.nn.Module | None = None
    artifacts: dict = field(default_factory=dict)  # `backfill_curve` (a DataFrame), `embeddings` (arrays by file)

    def cost(self, phase: str) -> dict:
        """The session's costs row of `phase` (`train`, `index`, ...)."""
        return next(row for row in self.costs if row["phase"] == phase)
