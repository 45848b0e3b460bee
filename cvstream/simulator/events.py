"""Typed events of the simulation. The engine orders them by the simulated clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

# Phases of one session, in the order the engine schedules them; the clock is session + offset.
PHASES = ("session_start", "train", "deploy", "index", "replay", "transform", "backfill", "evaluate", "session_end")


@dataclass(frozen=True, order=True)
class Event:
    session: int
    kind: ClassVar[str] = "event"

    @property
    def time(self) -> float:
        return self.session + PHASES.index(self.kind) / len(PHASES)


@dataclass(frozen=True)
class SessionStart(Event):
    kind: ClassVar[str] = "session_start"


@dataclass(frozen=True)
class Train(Event):
    kind: ClassVar[str] = "train"


@dataclass(frozen=True)
class Deploy(Event):
    kind: ClassVar[str] = "deploy"


@dataclass(frozen=True)
class Index(Event):
    kind: ClassVar[str] = "index"


@dataclass(frozen=True)
class UpdateReplay(Event):
    kind: ClassVar[str] = "replay"


@dataclass(frozen=True)
class Transform(Event):
    kind: ClassVar[str] = "transform"


@dataclass(frozen=True)
class Backfill(Event):
    kind: ClassVar[str] = "backfill"


@dataclass(frozen=True)
class Evaluate(Event):
    kind: ClassVar[str] = "evaluate"


@dataclass(frozen=True)
class SessionEnd(Event):
    kind: ClassVar[str] = "session_end"


@dataclass
class Outcome:
    """What handling an event produced: its generation, its cost, and rows for the tables."""

    generation: int
    seconds: float = 0.0
    backbone_forwards: int = 0
    transform_forwards: int = 0
    items: int = 0
    cost_phase: str | None = None  # the costs.parquet phase this event is billed to, if any
    metrics: list[dict] | None = None
    detail: dict | None = None
