"""Which driver runs a simulator, and what the timeline's driver writes: timeline.parquet, the summary in run.json,
each session's generation, and a resumed run that replays the same timeline."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import cvstream.timeline
from conftest import run_until_killed, tiny_dict, tiny_scenario
from conftest import tiny_timeline as timeline
from cvstream import cli
from cvstream.errors import UserError
from cvstream.simulator import Simulator, load_run


def run(policy="none", *, out=None, budget=None, **keys):
    backfill = {"policy": policy, **({"budget": budget} if budget is not None else {})}
    sim = Simulator(tiny_scenario(timeline=timeline(**keys), backfill=backfill), out_dir=out, write=out is not None)
    result = cvstream.timeline.run(sim)
    return sim, result.timeline, result.timeline_summary


def test_timeline_files_and_a_resume_after_sigkill_replay_the_same_timeline(tmp_path):
    whole = tmp_path / "whole"
    _, frame, summary = run("partial", budget=0.5, out=whole, ingest="continuous", deploy="hot")
    stored = pd.read_parquet(whole / "timeline.parquet")
    pd.testing.assert_frame_equal(stored, frame)
    pd.testing.assert_frame_equal(load_run(whole).timeline, frame)
    assert json.loads((whole / "run.json").read_text())["timeline"] == summary
    assert sorted(p.name for p in (whole / "generations").iterdir()) == [f"session-{t}.{e}" for t in range(3) for e in ("json", "pt")]

    killed = tmp_path / "killed"
    data = tiny_dict(timeline=timeline(ingest="continuous", deploy="hot"), backfill={"policy": "partial", "budget": 0.5})
    script = f"""
import os, signal
from cvstream.scenario import Scenario
from cvstream.simulator import Hook, Simulator
from cvstream.timeline import run

class KillInSessionTwo(Hook):
    def on_train_step(self, sim, step, total, terms):
        if sim.generation == 1 and step == 1:
            os.kill(os.getpid(), signal.SIGKILL)

run(Simulator(Scenario.from_dict({data!r}), out_dir={str(killed)!r}, hooks=[KillInSessionTwo()]))
"""
    run_until_killed(script)
    assert not (killed / "timeline.parquet").exists()
    assert cli.main(["run", "--resume", str(killed), "--no-progress"]) == 0
    resumed = pd.read_parquet(killed / "timeline.parquet")
    pd.testing.assert_frame_equal(resumed, stored)


def test_run_chooses_the_engine_without_a_timeline_section_and_the_timeline_with_one():
    plain = cvstream.timeline.run(tiny_scenario(stream={"sessions": 2}, method={"name": "finetune"}), write=False)
    assert plain.timeline is None and plain.timeline_summary is None and plain.status == "completed"
    sim = Simulator(tiny_scenario(stream={"sessions": 2}, method={"name": "finetune"}, timeline=timeline()), write=False)
    served = cvstream.timeline.run(sim)
    assert served.status == "completed" and len(served.timeline) and served.timeline_summary["deploys"] == 2
    # the sessions the timeline drove are the engine's: the same metric rows as the plain run
    pd.testing.assert_frame_equal(served.metrics.drop(columns="run_id"), plain.metrics.drop(columns="run_id"))
    with pytest.raises(TypeError):
        cvstream.timeline.run(sim, write=False)


def test_the_timeline_reads_each_generation_from_the_session_result(monkeypatch):
    kept = []
    run_session = Simulator.run_session

    def recording(self, t):
        result = run_session(self, t)
        kept.append(result)
        return result

    monkeypatch.setattr(Simulator, "run_session", recording)
    sim = Simulator(tiny_scenario(stream={"sessions": 2}, timeline=timeline()), write=False)
    with pytest.raises(UserError):
        sim.run()  # the engine alone does not run a timeline scenario
    cvstream.timeline.run(sim)
    assert [r.session for r in kept] == [0, 1] and all(r.model is not None and not r.model.training for r in kept)
    assert not any(p.requires_grad for r in kept for p in r.model.parameters())
    assert kept[0].model is not kept[1].model
