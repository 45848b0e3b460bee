"""`cvstream report`: tables, valid PNG plots, update gain, and clear errors for bad folders."""

from __future__ import annotations

import json

import matplotlib.image
import pandas as pd
import pytest

from cvstream import cli
from cvstream.simulator import Simulator
from conftest import tiny_scenario

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two seeds of CVS and one finetune run (the paragon, with a backfill curve) of the same stream."""
    root = tmp_path_factory.mktemp("report")
    out = {}
    for name, seed, method in (("cvs-a", 3, "cvs"), ("cvs-b", 4, "cvs"), ("finetune", 3, "finetune")):
        curve = {"curve_session": 2, "curve_steps": 2} if method == "finetune" else {}
        scenario = tiny_scenario(seed=seed, method={"name": method}, evaluation={"probe_items": 20}, backfill=curve)
        Simulator(scenario, out_dir=root / name).run()
        out[name] = root / name
    return out


def _valid_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_report_on_two_runs_writes_plots_and_prints_tables(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["report", str(runs["cvs-a"]), str(runs["cvs-b"]), "--out", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long titles
    assert "R@1 against the mixed gallery" in printed and "2 runs (2 seeds): mean ± sd" in printed
    assert "compatibility C[i][j]" in printed and "costs over the run by phase" in printed
    for name in ("recall_old_new.png", "compatibility.png", "accuracy_vs_forwards.png"):
        _valid_png(out / name)


def test_report_default_folder_is_next_to_the_data(runs, capsys):
    assert cli.main(["report", str(runs["finetune"])]) == 0
    for name in ("recall_old_new.png", "compatibility.png", "accuracy_vs_forwards.png", "backfill_curve.png"):
        _valid_png(runs["finetune"] / "report" / name)


def test_update_gain_against_a_paragon(runs, tmp_path, capsys):
    out = tmp_path / "gain"
    assert cli.main(["report", str(runs["cvs-a"]), "--paragon", str(runs["finetune"]), "--out", str(out)]) == 0
    assert "update gain" in capsys.readouterr().out
    gains = pd.read_parquet(out / "update_gain.parquet")
    metrics = pd.read_parquet(runs["cvs-a"] / "metrics.parquet")
    paragon = pd.read_parquet(runs["finetune"] / "metrics.parquet")

    def c(frame, i, j):
        return frame[(frame.query_generation == i) & (frame.gallery_view == f"gen:{j}") & (frame.metric == "recall@1")].value.item()

    assert gains.session.tolist() == [1, 2]
    for row in gains.itertuples():
        new_old, old_old, best = c(metrics, row.session, row.session - 1), c(metrics, row.session - 1, row.session - 1), c(paragon, row.session, row.session)
        expected = (new_old - old_old) / (best - old_old) if best != old_old else float("nan")
        assert row.update_gain == pytest.approx(expected, nan_ok=True)


def test_paragon_of_another_stream_is_refused(runs, capsys):
    assert cli.main(["report", str(runs["cvs-a"]), "--paragon", str(runs["cvs-b"])]) == 2
    assert "not the same stream" in capsys.readouterr().err


def test_report_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "not a cvstream run folder" in capsys.readouterr().err


def test_report_on_a_run_of_an_incompatible_version(runs, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    info = json.loads((runs["cvs-a"] / "run.json").read_text())
    (old / "run.json").write_text(json.dumps({**info, "format_version": 0}))
    assert cli.main(["report", str(old)]) == 2
    assert "incompatible" in capsys.readouterr().err


def test_report_on_a_run_without_a_completed_session(runs, tmp_path, capsys):
    early = tmp_path / "early"
    early.mkdir()
    (early / "run.json").write_text((runs["cvs-a"] / "run.json").read_text())
    assert cli.main(["report", str(early)]) == 2
    assert "no completed session" in capsys.readouterr().err
