"""Resume: a run killed with SIGKILL mid-session continues and writes what the uninterrupted run writes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from cvstream import cli
from cvstream.simulator import Hook, Simulator, load_run
from cvstream.simulator.checkpoint import latest
from conftest import killed_mid_session, run_until_killed, tiny_dict

# An IVF gallery in 25-item segments with a partial backfill: the checkpoint must keep each
# segment as it was at its session's end while the run's own files move on.
SCENARIO = tiny_dict(
    evaluation={"probe_items": 30, "every_steps": 3},
    gallery={"index": "ivf", "nlist": 4, "nprobe": 2, "segment_size": 25},
    backfill={"policy": "partial", "budget": 0.3, "order": "random"},
)



def _frames(run_dir):
    return {**{name: pd.read_parquet(run_dir / f"{name}.parquet") for name in ("metrics", "costs", "events")},
            "gallery": load_run(run_dir).gallery}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from cvstream.scenario import Scenario

    out = tmp_path_factory.mktemp("resume") / "whole"
    Simulator(Scenario.from_dict(SCENARIO), out_dir=out).run()
    return out


def test_sigkill_mid_session_then_resume_gives_the_same_tables(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    run_until_killed(killed_mid_session(SCENARIO, deployed=0), str(out))
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "running" and info["completed_sessions"] == 1
    assert latest(out)["session"] == 0

    assert cli.main(["run", "--resume", str(out), "--no-progress"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "completed" and info["completed_sessions"] == 3
    whole, resumed = _frames(uninterrupted), _frames(out)
    metrics_a, metrics_b = whole["metrics"].drop(columns="run_id"), resumed["metrics"].drop(columns="run_id")
    assert len(metrics_a) == len(metrics_b) and not metrics_b.duplicated(["session", "gallery_view", "subset", "metric"]).any()
    pd.testing.assert_frame_equal(metrics_a, metrics_b)  # same rows, same values, same order
    pd.testing.assert_frame_equal(whole["gallery"], resumed["gallery"])
    key = ["session", "phase", "backbone_forwards", "transform_forwards", "items"]
    pd.testing.assert_frame_equal(whole["costs"][key], resumed["costs"][key])
    assert resumed["events"].event_index.tolist() == list(range(len(whole["events"])))
    assert (resumed["events"].kind == whole["events"].kind).all()


def test_the_checkpoint_links_the_run_gallery_files_instead_of_copying_them(uninterrupted):
    folder = uninterrupted / "checkpoint" / f"session-{latest(uninterrupted)['session']}" / "gallery"
    segments = sorted(p.name for p in folder.glob("gallery-*.faiss"))
    assert len(segments) == 8  # 180 items in 25-item segments
    for name in [*segments, *(f"gallery-metadata/{p.name}" for p in (folder / "gallery-metadata").glob("*.parquet"))]:
        assert (folder / name).stat().st_ino == (uninterrupted / name).stat().st_ino


def test_resume_of_a_finished_run_says_so(uninterrupted, capsys):
    assert cli.main(["run", "--resume", str(uninterrupted), "--no-progress"]) == 2
    assert "finished" in capsys.readouterr().err


def test_resume_needs_a_run_folder(tmp_path, capsys):
    assert cli.main(["run", "--resume", str(tmp_path), "--no-progress"]) == 2
    assert "not a cvstream run folder" in capsys.readouterr().err


class _Interrupt(Hook):
    def after_deploy(self, sim, outcome):
        if sim.state.next_session == 1:  # in session 1, before its evaluation
            raise KeyboardInterrupt


def test_ctrl_c_keeps_completed_sessions_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    scenario_file = tmp_path / "tiny.yaml"
    scenario_file.write_text(yaml.safe_dump(tiny_dict(evaluation={"probe_items": 20})))
    original = Simulator.__init__

    def with_interrupt(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.hooks.append(_Interrupt())

    monkeypatch.setattr(Simulator, "__init__", with_interrupt)
    out = tmp_path / "run"
    assert cli.main(["run", str(scenario_file), "--out", str(out), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert f"cvstream run --resume {out}" in err
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted" and info["completed_sessions"] == 1
    assert set(pd.read_parquet(out / "metrics.parquet").session) == {0}
    monkeypatch.setattr(Simulator, "__init__", original)
    assert cli.main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert set(pd.read_parquet(out / "metrics.parquet").session) == {0, 1, 2}


def test_resuming_a_run_recorded_before_a_default_changed_keeps_its_value(tmp_path):
    from cvstream.scenario import Scenario
    from cvstream.simulator.run import FORMAT_VERSION

    old_form = Scenario.from_dict(SCENARIO).to_dict()
    old_form["gallery"].pop("narrow_queries", None)  # how run.json recorded a scenario at the old default
    (tmp_path / "run.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "run_id": "old", "status": "running", "scenario": old_form}))
    assert Scenario.from_run(tmp_path).gallery.narrow_queries == "pad"
    recorded = Simulator(Scenario.from_dict(SCENARIO), out_dir=tmp_path / "new").scenario.to_dict(complete=True)
    assert recorded["gallery"]["narrow_queries"] == Scenario.from_dict(SCENARIO).gallery.narrow_queries
