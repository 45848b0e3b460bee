"""Sweeps: every combination runs once, results land in one Parquet dataset, a rerun skips what is done."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cvstream.cli import main
from cvstream.errors import UserError
from cvstream.studies.intervals import mean_interval
from cvstream.studies.sweep import load_sweep, ray_available, read_results, run_sweep
from conftest import tiny_dict


def _files(tmp_path, **sweep):
    scenario = tiny_dict(stream={"sessions": 2}, evaluation={"probe_items": 8})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(scenario))
    spec = {"name": "grid", "scenarios": ["tiny.yaml"], "seeds": [1, 2], "methods": ["finetune", {"name": "cvs", "alpha": 5}],
            "engine": "local", **sweep}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_expand_is_the_product_of_the_axes_as_overrides(tmp_path):
    path = _files(tmp_path, backfill=["none", {"policy": "partial", "budget": 0.5}], set=["training.epochs=0"])
    spec, runs = load_sweep(path)
    assert len(runs) == 2 * 2 * 2
    assert runs[0].overrides == ("training.epochs=0", "seed=1", "method=finetune", 'backfill={"policy":"none"}')
    assert runs[-1].labels == {"scenario": "tiny", "seed": "2", "method": "cvs(alpha=5)", "backfill": "partial(budget=0.5)"}
    assert len({r.overrides for r in runs}) == len(runs)


@pytest.mark.slow
def test_two_by_two_sweep_runs_locally_into_one_parquet_dataset(tmp_path):
    path = _files(tmp_path)
    result = run_sweep(path, out_dir=tmp_path / "out")
    assert result.engine == "local"
    assert result.runs.status.tolist() == ["completed"] * 4
    metrics = pd.read_parquet(tmp_path / "out" / "metrics")  # the folder is the dataset
    assert sorted(metrics.run_index.unique().tolist()) == [0, 1, 2, 3]
    combos = metrics.groupby(["seed", "method"]).run_id.nunique()
    assert combos.to_dict() == {("1", "cvs(alpha=5)"): 1, ("1", "finetune"): 1, ("2", "cvs(alpha=5)"): 1, ("2", "finetune"): 1}
    # each run really used its method and seed: cvs adds loss terms, and the two seeds differ
    events = pd.read_parquet(tmp_path / "out" / "runs" / result.runs.run_dir.iloc[1].split("/")[-1] / "events.parquet")
    assert "triplet" in events[events.kind == "train"].detail.iloc[-1]
    r1 = metrics.query("metric == 'recall@1' and subset == 'all' and gallery_view == 'mixed'").groupby("run_index").value.apply(tuple)
    assert r1[0] != r1[2]  # same method, other seed
    costs = read_results(tmp_path / "out", "costs")
    assert set(costs.phase) >= {"train", "index", "evaluate"} and costs.run_index.nunique() == 4


def test_rerun_skips_completed_runs(tmp_path, monkeypatch):
    path = _files(tmp_path, seeds=[1], methods=["finetune"])
    run_sweep(path, out_dir=tmp_path / "out")
    import cvstream.studies.sweep as sweep

    monkeypatch.setattr(sweep, "execute", lambda task: pytest.fail("a completed run ran again"))
    again = run_sweep(path, out_dir=tmp_path / "out")
    assert again.runs.status.tolist() == ["completed"]


def test_sweep_summarizes_each_cell_over_its_seeds(tmp_path, capsys):
    path = _files(tmp_path, methods=["finetune"])  # seeds 1 and 2: one cell of two runs
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    runs = pd.read_parquet(tmp_path / "out" / "runs.parquet")
    summary = pd.read_parquet(tmp_path / "out" / "summary.parquet")
    assert len(summary) == 1 and summary.seeds.tolist() == [2] and summary.method.tolist() == ["finetune"] and "seed" not in summary
    for figure in ("ar@1", "last_r@1_all", "seconds"):
        expected = mean_interval(runs[figure])
        assert (summary[figure][0], summary[f"{figure}_low"][0], summary[f"{figure}_high"][0]) == pytest.approx(
            (expected.mean, expected.low, expected.high))
    metrics = read_results(tmp_path / "out").query("metric == 'recall@1' and subset == 'all' and gallery_view == 'mixed'")
    assert runs.set_index("run_index")["ar@1"].to_dict() == pytest.approx(metrics.groupby("run_index").value.mean().to_dict())
    assert "each cell over its seeds" in printed and "mean over 2 seeds ± the half-width of its 95% t interval" in printed


def test_cli_sweep_and_a_bad_combination_exits_2(tmp_path, capsys):
    path = _files(tmp_path, seeds=[1], methods=["finetune"])
    assert main(["sweep", str(path), "--out", str(tmp_path / "cli")]) == 0
    assert "1 of 1 runs completed (local)" in capsys.readouterr().out
    bad = _files(tmp_path, methods=["finetune", "no-such-method"])
    assert main(["sweep", str(bad), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "no-such-method" in err and "run " in err
    assert not (tmp_path / "bad").exists()  # nothing ran


def test_unknown_key_in_sweep_file_names_it(tmp_path):
    path = _files(tmp_path, sedes=[1])
    with pytest.raises(UserError, match="sedes"):
        load_sweep(path)


def test_ray_engine_without_ray_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is not installed: `import ray` raises ImportError
    assert not ray_available()
    with pytest.raises(UserError, match="ray is not installed"):
        run_sweep(_files(tmp_path), out_dir=tmp_path / "out", engine="ray")


@pytest.fixture
def ray_session():
    """One small local Ray cluster for the test (sweep.py joins a running one), shut down after it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024**2)
    yield ray
    ray.shutdown()


CRASH_PLUGIN = """
import os

from cvstream.gallery.backfill import BACKFILL_ORDERS


@BACKFILL_ORDERS.register("kill-the-worker")
def kill_the_worker(candidates, *, gallery, rng, uncertainty):
    os._exit(3)  # as an out-of-memory kill would: the process is gone, no exception comes back
"""


@pytest.mark.slow
@pytest.mark.skipif(not ray_available(), reason="ray is not installed (optional extra 'ray')")
def test_sweep_as_ray_tasks_reports_failed_runs_and_keeps_the_others(tmp_path, ray_session, capsys, plugin_file):
    # four tasks on Ray: one fails at run time (its backfill curve asks for a session the stream lacks),
    # one kills its worker process (a plugin order, unregistered after the test by the plugin_file fixture)
    plugin = plugin_file(CRASH_PLUGIN, "crash.py")
    backfill = ["none", {"policy": "none", "curve_session": 9}, "full", {"policy": "partial", "budget": 0.5, "order": "kill-the-worker"}]
    path = _files(tmp_path, seeds=[1], methods=["finetune"], backfill=backfill, engine="ray")
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--plugin", str(plugin)]) == 1  # failed runs: exit status 1, after every run
    printed = " ".join(capsys.readouterr().out.split())
    assert "2 of 4 runs completed (ray)" in printed
    assert "none(curve_session=9)): failed" in printed and "curve_session = 9" in printed
    runs = pd.read_parquet(out / "runs.parquet").set_index("backfill")
    crashed = "partial(budget=0.5,order=kill-the-worker)"
    assert runs.status.to_dict() == {"none": "completed", "none(curve_session=9)": "failed", "full": "completed", crashed: "failed"}
    assert runs.loc["none(curve_session=9)", "error"].startswith("UserError") and runs.loc["none", "error"] == ""
    assert "Worker" in runs.loc[crashed, "error"] or "worker" in runs.loc[crashed, "error"]
    metrics = read_results(out)
    assert sorted(metrics.run_index.unique().tolist()) == [0, 2]  # the others' results are all there
    assert set(metrics.backfill) == {"none", "full"}
    assert read_results(out, "costs").query("backfill == 'full' and phase == 'backfill'").backbone_forwards.sum() > 0
    for folder in runs.run_dir[runs.status == "completed"]:  # each ran in a Ray worker, not in this process
        assert "ray" in json.loads((Path(folder) / "run.json").read_text())["argv"][0]


@pytest.mark.slow
@pytest.mark.skipif(not ray_available(), reason="ray is not installed (optional extra 'ray')")
def test_a_ray_sweep_takes_the_sessions_two_policies_share_from_the_generation_store(tmp_path, ray_session):
    # One run at a time (2 CPUs a run on a 2-CPU cluster): the second policy finds sessions 0 and 1 stored by the first,
    # trained alike under both (nothing is stale before session 1's backfill); cvs's L_d reads a different gallery at 2.
    scenario = tiny_dict(stream={"sessions": 3}, evaluation={"probe_items": 8})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(scenario))
    spec = {"name": "store", "scenarios": ["tiny.yaml"], "seeds": [1], "methods": [{"name": "cvs", "alpha": 5}],
            "backfill": ["none", "full"], "engine": "ray", "cpus_per_run": 2}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    store = tmp_path / "store"
    result = run_sweep(tmp_path / "sweep.yaml", out_dir=tmp_path / "out", store=store)
    assert result.runs.status.tolist() == ["completed"] * 2
    train = read_results(tmp_path / "out", "costs").query("phase == 'train'").sort_values(["run_index", "session"])
    assert train.reused.tolist() == [False, False, False, True, True, False]
    assert len(list(store.rglob("*.gen"))) == 4  # sessions 0-2 of the first run, session 2 of the second
