"""`cvstream compare` (backfill policies, and serving policies on the timeline), and bad input that must end with exit status 2."""

from __future__ import annotations

import contextlib
import io

import pandas as pd
import pytest
import yaml
from conftest import tiny_dict, tiny_timeline, write_scenario
from cvstream.cli import main
from cvstream.errors import UserError
from cvstream.studies.compare import parse_variants


def scenario_file(tmp_path, **sections):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_dict(**sections)))
    return str(path)


def test_variants_parse_and_bad_ones_are_user_errors():
    variants = parse_variants("none,full,partial:0.25:random,partial:100:oldest,transform,transform:0.1:uncertainty")
    assert [(v.policy, v.budget, v.order) for v in variants] == [
        ("none", None, "random"), ("full", None, "random"), ("partial", 0.25, "random"), ("partial", 100, "oldest"),
        ("transform", None, "random"), ("transform", 0.1, "uncertainty"),
    ]
    assert variants[3].folder == "partial-100-oldest"
    for bad in ("partial", "partial:1.5", "partial:0", "partial:x", "partial:0.2:sideways", "everything", "none,none", "none,"):
        with pytest.raises(UserError):
            parse_variants(bad)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    out = tmp / "cmp"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["compare", scenario_file(tmp, method={"name": "finetune"}), "--backfill", "none,partial:0.5:far-from-mean",
                     "--out", str(out), "--no-progress", "--project-gallery", "1000000"])
    return code, out, printed.getvalue()


def test_compare_runs_the_variants_on_one_stream_and_writes_the_table(compared):
    code, out, printed = compared
    assert code == 0
    assert "far-from-mean" in printed and "AR@1" in printed
    table = pd.read_parquet(out / "comparison.parquet").set_index("variant")
    assert list(table.index) == ["none", "partial:0.5:far-from-mean"]
    assert table.loc["none", "backfill_forwards"] == 0 and table.loc["none", "projected_hours"] == 0
    assert table.loc["partial:0.5:far-from-mean", "backfill_forwards"] == 60 + 90  # floor(0.5 x 120) of 60 stale, then 90 of 120
    assert table.loc["partial:0.5:far-from-mean", "projected_hours"] > 0
    assert (table.projected_gallery == 10**6).all()
    # Same stream and seed: the first session (nothing to backfill yet) is identical.
    first = {name: pd.read_parquet(out / folder / "metrics.parquet").query("session == 0") for name, folder in
             [("none", "none"), ("partial", "partial-0.5-far-from-mean")]}
    assert first["none"].value.tolist() == first["partial"].value.tolist()
    curve = pd.read_parquet(out / "backfill_curve.parquet")
    assert set(curve.session) == {2} and curve.fraction.max() == 1.0


@pytest.mark.parametrize("argv", [
    ["--backfill", "partial:2.5"],
    ["--backfill", "partial:0.2:sideways"],
    ["--project-gallery", "0"],
    ["--curve-session", "7"],
])
def test_compare_rejects_bad_input_with_status_2(tmp_path, argv):
    out = tmp_path / "cmp"
    assert exit_status(["compare", scenario_file(tmp_path), "--out", str(out), "--no-progress", *argv]) == 2
    assert not out.exists() or not any(out.iterdir())  # nothing ran


@pytest.mark.parametrize(("overrides", "message"), [
    (["gallery.index=ivf", "gallery.nlist=1000"], "nlist = 1000 needs at least 1000 vectors"),
    (["backfill.policy=partial", "backfill.budget=1.5"], "outside its range"),
    (["backfill.policy=partial"], "needs a budget"),
    (["backfill.policy=full", "backfill.order=uncertainty"], "needs policy transform"),
    (["gallery.index=ivfpq", "gallery.pq_m=5"], "must divide"),
])
def test_run_rejects_a_gallery_or_backfill_that_cannot_work(tmp_path, overrides, message, capsys):
    argv = ["run", scenario_file(tmp_path), "--out", str(tmp_path / "run"), "--no-progress"]
    for item in overrides:
        argv += ["--set", item]
    assert exit_status(argv) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")


def exit_status(argv: list[str]) -> int:
    """main's return value, or argparse's exit status."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_report_projects_a_finished_run(compared, tmp_path, capsys):
    _, out, _ = compared
    run = out / "partial-0.5-far-from-mean"
    assert exit_status(["report", str(run), "--out", str(tmp_path / "report"), "--project-gallery", "1e9"]) == 0
    printed = capsys.readouterr().out
    assert "projected to 1,000,000,000 items" in printed and "50.0%" in printed  # session 2 re-embedded 90 of 180 items


def test_validate_catches_an_index_that_cannot_hold_the_first_session(tmp_path, capsys):
    path = scenario_file(tmp_path, gallery={"index": "ivf", "nlist": 500})
    assert exit_status(["validate", path]) == 2
    assert "nlist = 500" in capsys.readouterr().err
    assert exit_status(["validate", scenario_file(tmp_path, gallery={"index": "ivf", "nlist": 8})]) == 0


def test_compare_timeline_lays_the_policies_on_one_table(tmp_path):
    path = write_scenario(tmp_path, tiny_dict(timeline=tiny_timeline(), stream={"sessions": 2}))
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--timeline", "--variants", "none,full-hot,full-after-backfill,dual", "--out", str(out),
                     "--no-progress"]) == 0
    table = pd.read_parquet(out / "timeline_comparison.parquet")
    assert list(table.variant) == ["none", "full-hot", "full-after-backfill", "dual"]
    assert table.set_index("variant").accel_hours_backfill["none"] == 0
    assert (table.set_index("variant").accel_hours_backfill[["full-hot", "full-after-backfill", "dual"]] > 0).all()
    assert (out / "timeline.png").stat().st_size > 10_000
    assert main(["compare", str(path), "--timeline", "--variants", "nope", "--out", str(tmp_path / "x")]) == 2


def test_a_killed_timeline_study_is_taken_up_where_it_stopped(tmp_path):
    import json
    import shutil

    path = write_scenario(tmp_path, tiny_dict(timeline=tiny_timeline(), stream={"sessions": 2}))
    out = tmp_path / "cmp"
    argv = ["compare", str(path), "--timeline", "--variants", "none,full-hot,dual", "--out", str(out), "--no-progress",
            "--store", str(tmp_path / "store")]
    assert main(argv) == 0
    whole = pd.read_parquet(out / "timeline_comparison.parquet")
    # As a killed study leaves it: no comparison table, one variant never started, one interrupted after its first session.
    (out / "timeline_comparison.parquet").unlink()
    shutil.rmtree(out / "dual")
    info = json.loads((out / "full-hot" / "run.json").read_text())
    (out / "full-hot" / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    assert main(argv) == 0
    again = pd.read_parquet(out / "timeline_comparison.parquet")
    pd.testing.assert_frame_equal(whole.drop(columns="run_dir"), again.drop(columns="run_dir"))
    costs = pd.read_parquet(out / "dual" / "costs.parquet").query("phase == 'train'")
    assert costs.reused.all()  # dual's learning side is full-hot's: taken from the store, not trained
    other = write_scenario(tmp_path, tiny_dict(timeline=tiny_timeline(), stream={"sessions": 2}, seed=9), name="other.yaml")
    (out / "timeline_comparison.parquet").unlink()
    assert main(["compare", str(other), *argv[2:]]) == 2  # another scenario's runs are never taken up


def test_compare_timeline_says_when_traffic_exceeds_the_serving_capacity(tmp_path, capsys):
    path = write_scenario(tmp_path, tiny_dict(timeline=tiny_timeline(queries_per_hour=3600), stream={"sessions": 2}))
    assert main(["compare", str(path), "--timeline", "--variants", "none", "--out", str(tmp_path / "cmp"), "--no-progress"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "warning: 1.0 queries/s exceeds the serving capacity" in printed
