"""`compare --workers N`: a study's runs go in N processes (each loading the plugin files), then are read back in
order: the same tables as one run at a time; a run that fails stops the study with one message naming its folder."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import tiny_dict, tiny_timeline, write_scenario
from cvstream.cli import main
from cvstream.studies.workers import completed, run_ahead, side_by_side, threads_per_worker

ORDER_PLUGIN = """
    from cvstream.gallery.backfill import BACKFILL_ORDERS


    @BACKFILL_ORDERS.register("highest-id-first")
    def highest_id_first(candidates, *, gallery, rng, uncertainty):
        return candidates[::-1]
"""

FAILING_PLUGIN = """
    from cvstream.gallery.backfill import BACKFILL_ORDERS


    @BACKFILL_ORDERS.register("explode")
    def explode(candidates, *, gallery, rng, uncertainty):
        raise RuntimeError("the order broke")
"""


def quietly(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def test_side_by_side_interleaves_the_seeds_and_keeps_each_seeds_order():
    jobs = [(Path(f"{v}-{s}"), None, s) for s in (0, 1, 2) for v in ("a", "b")]
    assert [str(f) for f, _, _ in side_by_side(jobs)] == ["a-0", "a-1", "a-2", "b-0", "b-1", "b-2"]
    one_seed = [(Path(v), None, 7) for v in "abc"]
    assert side_by_side(one_seed) == one_seed


def test_each_worker_gets_its_share_of_the_cpus(monkeypatch):
    monkeypatch.setattr("cvstream.studies.workers.cpus", lambda: 16)
    assert [threads_per_worker(n) for n in (1, 2, 3, 16, 40)] == [16, 8, 5, 1, 1]


@pytest.mark.slow
def test_a_study_in_two_processes_gives_the_tables_of_one_run_at_a_time(tmp_path, plugin_file):
    plugin = plugin_file(ORDER_PLUGIN)  # loaded here by main, and in each worker by path
    path = write_scenario(tmp_path, tiny_dict(method={"name": "finetune"}, stream={"sessions": 2}))
    tables, threads = {}, {}
    for workers in (1, 2):
        out = tmp_path / f"workers-{workers}"
        argv = ["compare", str(path), "--plugin", str(plugin), "--backfill", "none,partial:0.5:highest-id-first", "--seeds", "2",
                "--out", str(out), "--no-progress", "--store", str(tmp_path / f"store-{workers}"), "--workers", str(workers)]
        with torch_threads(threads_per_worker(2)):  # the workers' threads: torch may round differently on other counts
            assert quietly(argv) == 0
        tables[workers] = pd.read_parquet(out / "comparison_runs.parquet").drop(columns=["run_dir", "seconds", "projected_hours"])  # timed
        threads[workers] = json.loads((out / "partial-0.5-highest-id-first" / "seed-3" / "run.json").read_text())["threads"]
    pd.testing.assert_frame_equal(tables[1], tables[2])  # to the last bit
    assert threads[1] == threads[2] == {"torch": threads_per_worker(2), "faiss": threads_per_worker(2)}  # what each run recorded
    assert completed(tmp_path / "workers-2" / "partial-0.5-highest-id-first" / "seed-3")


@contextlib.contextmanager
def torch_threads(count: int):
    import faiss
    import torch

    held = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(count)
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(held[0])
        faiss.omp_set_num_threads(held[1])


@pytest.mark.slow
def test_a_timeline_study_runs_a_budget_blind_variant_once_in_its_workers(tmp_path):
    timeline = tiny_timeline(chunk_items=60, eval_min_change=0.5, eval_every_hours=5)
    path = write_scenario(tmp_path, tiny_dict(method={"name": "finetune"}, stream={"sessions": 2}, timeline=timeline))
    out = tmp_path / "cmp"
    argv = ["compare", str(path), "--timeline", "--variants", "none,full-hot", "--budgets", "1,4", "--out", str(out), "--no-progress",
            "--workers", "2"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    ran = sorted(line.split()[-1] for line in printed.getvalue().splitlines() if line.strip().startswith("ran "))
    assert ran == ["budget-1/full-hot", "budget-1/none", "budget-4/full-hot"]  # a line as each run ends: three runs
    assert not (out / "budget-4" / "none").exists() and completed(out / "budget-1" / "none") and completed(out / "budget-4" / "full-hot")
    table = pd.read_parquet(out / "timeline_comparison.parquet").set_index(["backfill_accelerators", "variant"])
    assert table.loc[(4, "none"), "quality_time_area"] == table.loc[(1, "none"), "quality_time_area"]
    assert table.loc[(4, "full-hot"), "quality_time_area"] != table.loc[(1, "full-hot"), "quality_time_area"]


def test_completed_runs_are_not_run_again(tmp_path):
    from cvstream.scenario import Scenario
    from cvstream.simulator.run import FORMAT_VERSION

    folder = tmp_path / "done"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "status": "completed"}))
    scenario = Scenario.from_dict(tiny_dict())
    assert run_ahead([(folder, scenario, 0)], workers=2) == 0  # nothing to run: no process started


@pytest.mark.slow
def test_a_run_that_fails_in_a_worker_stops_the_study_with_one_message(tmp_path, plugin_file, capsys):
    plugin = plugin_file(FAILING_PLUGIN)
    path = write_scenario(tmp_path, tiny_dict(method={"name": "finetune"}, stream={"sessions": 2}))
    out = tmp_path / "cmp"
    argv = ["compare", str(path), "--plugin", str(plugin), "--backfill", "none,partial:0.5:explode", "--out", str(out),
            "--no-progress", "--no-store", "--workers", "2"]
    assert quietly(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"the run in {out / 'partial-0.5-explode'} failed: RuntimeError: the order broke" in err
    assert "Traceback" not in err and not (out / "comparison.parquet").exists()


def test_a_study_whose_runs_ran_on_different_thread_counts_says_so(tmp_path, caplog):
    """Runs gathered from two machines (or made with and without --workers) are different draws of training: the study
    reads them back, and warns."""
    path = write_scenario(tmp_path, tiny_dict(method={"name": "finetune"}, stream={"sessions": 2}))
    out = tmp_path / "cmp"
    argv = ["compare", str(path), "--backfill", "none,full", "--out", str(out), "--no-progress", "--no-store"]
    with caplog.at_level("WARNING", logger="cvstream.studies.compare"):
        assert quietly(argv) == 0
    assert "thread counts" not in caplog.text  # one process, one count
    record = out / "full" / "run.json"
    info = json.loads(record.read_text())
    info["threads"]["torch"] += 3
    record.write_text(json.dumps(info))
    (out / "comparison.parquet").unlink()
    caplog.clear()
    with caplog.at_level("WARNING", logger="cvstream.studies.compare"):
        assert quietly(argv) == 0  # read back, not run again
    text = " ".join(caplog.text.split())
    assert "made on different torch thread counts" in text and "1 on" in text and "another draw of training" in text
