"""Which driver runs a simulator: the service timeline where the scenario has a `timeline` section, else the
session engine's own loop. `cvstream run`, `--resume`, `compare` and `sweep` all go through `run`."""

from __future__ import annotations

from cvstream.files import write_parquet
from cvstream.simulator import RunResult, Simulator
from cvstream.timeline.service import Timeline, TimelineResult


def run_timeline(sim: Simulator) -> TimelineResult:
    """Run `sim` (whose scenario has a timeline section) through the service timeline: every session from the timeline's
    clock, timeline.parquet written, and the summary recorded in run.json."""
    with sim.running() as record:
        result = Timeline(sim).run()
        if sim.run_dir is not None:
            write_parquet(sim.run_dir / "timeline.parquet", result.frame)
        record["timeline"] = result.summary
    return result


def run(simulator_or_scenario, **simulator_options) -> RunResult:
    """Run a `Simulator`, or a scenario (`Simulator(scenario, **simulator_options)`), with the driver its scenario asks for:
    the service timeline where it has a `timeline` section (the result then carries `timeline` and `timeline_summary`),
    else `Simulator.run`."""
    sim = simulator_or_scenario
    if not isinstance(sim, Simulator):
        sim = Simulator(sim, **simulator_options)
    elif simulator_options:
        raise TypeError("simulator options go with a scenario, not with a Simulator already built")
    if sim.scenario.timeline is None:
        return sim.run()
    line = run_timeline(sim)
    return sim.result(timeline=line.frame, timeline_summary=line.summary)
