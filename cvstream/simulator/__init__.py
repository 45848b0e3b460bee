"""Events and the engine, metrics, costs, outputs, progress, report."""

from cvstream.simulator.engine import Simulator
from cvstream.simulator.hooks import Hook
from cvstream.simulator.run import RunResult, load_run

__all__ = ["Hook", "RunResult", "Simulator", "load_run"]
