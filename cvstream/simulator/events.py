"""What one step of a session is called, and what it produced."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    metrics: list[dict] | None = None
    detail: dict | None = None
    artifacts: dict = field(default_factory=dict)  # for the writer: `backfill_curve` (a DataFrame), `embeddings` (arrays by file)
