"""The session engine: one session in its one order, the run state and its checkpoint, hooks, tables and outputs."""

from cvstream.simulator.engine import Simulator
from cvstream.simulator.events import SessionResult
from cvstream.simulator.hooks import Hook
from cvstream.simulator.run import RunResult, load_run

__all__ = ["Hook", "RunResult", "SessionResult", "Simulator", "load_run"]
