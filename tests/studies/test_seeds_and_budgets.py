"""Studies over seeds and budgets: `compare --seeds N` and `compare --timeline --seeds N --budgets ...` run every
variant per seed (and budget), report means with 95% intervals and paired differences that say whether they are
resolved, and the frontier of quality-time area against cost per budget; malformed options are usage errors."""

from __future__ import annotations

import contextlib
import io
import json

import pandas as pd
import pytest

from conftest import tiny_dict, tiny_timeline, write_scenario
from cvstream.cli import main
from cvstream.studies.intervals import mean_interval, paired_difference


def exit_status(argv: list[str]) -> int:
    """main's return value, or argparse's exit status."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def run_printed(argv: list[str]) -> tuple[int, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(argv)
    return code, printed.getvalue()


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "0"], "argument --seeds: 0: at least 1 seed"),
    (["--seeds", "-2"], "at least 1 seed"),
    (["--seeds", "1.5"], "not a whole number of seeds"),
    (["--seeds", "three"], "not a whole number of seeds"),
    (["--timeline", "--budgets", "2,,8"], "an empty item between commas"),
    (["--timeline", "--budgets", ""], "an empty item between commas"),
    (["--timeline", "--budgets", "2,x"], "'x' is not a whole number"),
    (["--timeline", "--budgets", "2.5"], "'2.5' is not a whole number"),
    (["--timeline", "--budgets", "0,2"], "each budget must be >= 1"),
    (["--timeline", "--budgets", "-1"], "each budget must be >= 1"),
    (["--timeline", "--budgets", "2,8,2"], "2 is listed twice"),
], ids=["seeds-0", "seeds-negative", "seeds-fraction", "seeds-word", "budgets-empty-item", "budgets-empty", "budgets-word",
        "budgets-fraction", "budgets-0", "budgets-negative", "budgets-twice"])
def test_malformed_seeds_and_budgets_are_usage_errors(tmp_path, capsys, argv, message):
    path = write_scenario(tmp_path, tiny_dict(timeline=tiny_timeline()))
    out = tmp_path / "cmp"
    assert exit_status(["compare", str(path), "--out", str(out), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"argument {argv[-2]}: " in err and message in err  # one message, naming the option
    assert "Traceback" not in err and not out.exists()  # nothing ran


@pytest.mark.parametrize(("argv", "message"), [
    (["--budgets", "2,8"], "--budgets sets the backfill accelerators of the service timeline: give --timeline too"),
    (["--seeds", "2", "--backfill", "none,full", "--reference", "partial"], "--reference 'partial' is not one of the variants (none, full)"),
    (["--timeline", "--variants", "none,dual", "--reference", "full-hot"], "--reference 'full-hot' is not one of the variants"),
])
def test_options_that_do_not_fit_the_study_are_user_errors(tmp_path, capsys, argv, message):
    path = write_scenario(tmp_path, tiny_dict(timeline=tiny_timeline()))
    out = tmp_path / "cmp"
    assert exit_status(["compare", str(path), "--out", str(out), "--no-progress", *argv]) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not out.exists() or not any(out.iterdir())


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seeds")
    path = write_scenario(tmp, tiny_dict(method={"name": "finetune"}, stream={"sessions": 2}))
    out = tmp / "cmp"
    code, printed = run_printed(["compare", str(path), "--backfill", "none,full", "--seeds", "2", "--out", str(out), "--no-progress"])
    return code, out, printed


def test_compare_over_seeds_runs_each_variant_per_seed(seeded):
    code, out, _ = seeded
    assert code == 0
    for variant in ("none", "full"):
        for seed in (3, 4):  # the scenario's seed, then the next
            info = json.loads((out / variant / f"seed-{seed}" / "run.json").read_text())
            assert info["scenario"]["seed"] == seed and info["scenario"]["backfill"]["policy"] == variant
    runs = pd.read_parquet(out / "comparison_runs.parquet")
    assert list(zip(runs.seed, runs.variant)) == [(3, "none"), (3, "full"), (4, "none"), (4, "full")]
    first = {(v, s): pd.read_parquet(out / v / f"seed-{s}" / "metrics.parquet").query("session == 0").value.tolist()
             for v in ("none", "full") for s in (3, 4)}
    assert first["none", 3] == first["full", 3]  # paired: one seed's stream and initial model on both sides
    assert first["none", 3] != first["none", 4]
    assert (out / "backfill_curve.parquet").is_file()


def test_compare_over_seeds_reports_means_intervals_and_paired_differences(seeded):
    _, out, printed = seeded
    runs = pd.read_parquet(out / "comparison_runs.parquet")
    table = pd.read_parquet(out / "comparison.parquet").set_index("variant")
    assert list(table.index) == ["none", "full"] and (table.seeds == 2).all() and (table.reference == "none").all()
    full = runs[runs.variant == "full"].sort_values("seed")
    none = runs[runs.variant == "none"].sort_values("seed")
    expected = mean_interval(full["ar@1"])
    assert (table.loc["full", "ar@1"], table.loc["full", "ar@1_low"], table.loc["full", "ar@1_high"]) == pytest.approx(
        (expected.mean, expected.low, expected.high))
    for figure in ("ar@1", "last_r@1_all"):
        difference = paired_difference(full[figure].to_numpy(), none[figure].to_numpy())
        assert table.loc["full", f"diff_{figure}"] == pytest.approx(difference.mean)
        assert table.loc["full", f"diff_{figure}_high"] == pytest.approx(difference.high)
        assert bool(table.loc["full", f"diff_{figure}_resolved"]) == difference.resolved
        assert pd.isna(table.loc["none", f"diff_{figure}_resolved"])
    assert table.loc["full", "backfill_forwards"] > 0 and table.loc["full", "run_dir"] == str(out / "full")
    text = " ".join(printed.split())
    assert "mean over 2 seeds ± the half-width of its 95% t interval" in text
    assert "paired differences against none" in text and "resolved" in text and "none (seed 4): AR@1" in text


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budgets")
    # few evaluations (large chunks, none for small gallery changes): eight short timelines
    timeline = tiny_timeline(accelerator={"price_per_hour": 2.5}, chunk_items=60, eval_min_change=0.5, eval_every_hours=5)
    path = write_scenario(tmp, tiny_dict(method={"name": "finetune"}, stream={"sessions": 2}, timeline=timeline))
    out = tmp / "cmp"
    code, printed = run_printed(["compare", str(path), "--timeline", "--variants", "none,full-hot", "--seeds", "2", "--budgets", "1,4",
                                 "--reference", "full-hot", "--out", str(out), "--no-progress"])
    return code, out, printed


@pytest.mark.slow
def test_timeline_study_runs_every_budget_seed_and_variant(budgeted):
    code, out, _ = budgeted
    assert code == 0
    for budget in (1, 4):
        assert (out / f"budget-{budget}" / "timeline.png").is_file()
        for seed in (3, 4):
            scenario = json.loads((out / f"budget-{budget}" / "full-hot" / f"seed-{seed}" / "run.json").read_text())["scenario"]
            assert scenario["seed"] == seed and scenario["timeline"]["accelerators"]["backfill"] == budget
            assert scenario["timeline"]["accelerators"]["train"] == 2  # the rest of the section as the scenario has it
    # `none` never backfills: it ran once per seed, at the first budget, and is reported under both
    assert (out / "budget-1" / "none" / "seed-3" / "run.json").is_file() and not (out / "budget-4" / "none").exists()
    runs = pd.read_parquet(out / "timeline_comparison_runs.parquet")
    assert len(runs) == 8 and set(runs.backfill_accelerators) == {1, 4} and set(runs.seed) == {3, 4}
    assert (runs.cost_total == runs.accel_hours_total * 2.5).all()
    none = runs[runs.variant == "none"].set_index(["backfill_accelerators", "seed"])
    assert none.loc[1].drop(columns="run_dir").equals(none.loc[4].drop(columns="run_dir"))
    table = pd.read_parquet(out / "timeline_comparison.parquet").set_index(["backfill_accelerators", "variant"])
    assert table.loc[(4, "none"), "run_dir"] == str(out / "budget-1" / "none")


@pytest.mark.slow
def test_a_variant_that_never_backfills_is_the_same_run_at_every_budget(tmp_path):
    """What lets a study run `none` once for all its budgets: its timeline and summary do not move with the
    backfill accelerators (while full-hot's do, so the comparison could tell)."""
    from cvstream.scenario import Scenario
    from cvstream.simulator import Simulator
    from cvstream.studies.compare import budget_blind
    from cvstream.timeline import run

    timeline = tiny_timeline(chunk_items=60, eval_min_change=0.5, eval_every_hours=5)
    summaries, frames = {}, {}
    for policy in ("none", "full"):
        for budget in (1, 4):
            data = tiny_dict(method={"name": "finetune"}, stream={"sessions": 2}, backfill={"policy": policy},
                             timeline={**timeline, "accelerators": {**timeline["accelerators"], "backfill": budget}})
            result = run(Simulator(Scenario.from_dict(data), out_dir=tmp_path / f"{policy}-{budget}", progress=False))
            summaries[policy, budget], frames[policy, budget] = result.timeline_summary, result.timeline
    assert budget_blind("none") and not budget_blind("full-hot") and not budget_blind("transform")
    assert summaries["none", 1] == summaries["none", 4]
    pd.testing.assert_frame_equal(frames["none", 1], frames["none", 4])
    assert summaries["full", 1] != summaries["full", 4]


@pytest.mark.slow
def test_timeline_study_reports_intervals_differences_and_the_frontier(budgeted):
    _, out, printed = budgeted
    runs = pd.read_parquet(out / "timeline_comparison_runs.parquet")
    table = pd.read_parquet(out / "timeline_comparison.parquet").set_index(["backfill_accelerators", "variant"])
    assert list(table.index) == [(1, "none"), (1, "full-hot"), (4, "none"), (4, "full-hot")]
    at = runs[runs.backfill_accelerators == 4].sort_values("seed")
    for figure in ("quality_time_area", "regret_area", "accel_hours_total", "cost_total"):
        difference = paired_difference(at[at.variant == "none"][figure].to_numpy(), at[at.variant == "full-hot"][figure].to_numpy())
        assert table.loc[(4, "none"), f"diff_{figure}"] == pytest.approx(difference.mean, nan_ok=True)
        assert bool(table.loc[(4, "none"), f"diff_{figure}_resolved"]) == difference.resolved
    assert table.loc[(4, "none"), "diff_accel_hours_total"] < 0  # no backfill: fewer accelerator-hours on every seed
    assert bool(table.loc[(4, "none"), "diff_accel_hours_total_resolved"])
    area = mean_interval(runs[(runs.backfill_accelerators == 1) & (runs.variant == "none")].quality_time_area)
    assert table.loc[(1, "none"), "quality_time_area_high"] == pytest.approx(area.high)
    frontier = pd.read_parquet(out / "frontier.parquet")
    assert list(frontier.columns[:2]) == ["backfill_accelerators", "variant"] and len(frontier) == 4
    for budget, group in frontier.groupby("backfill_accelerators"):
        assert group.accel_hours_total.is_monotonic_increasing
        assert group.on_frontier.iloc[0] and group.variant.iloc[0] == "none"  # the cheapest is always on it
    assert (out / "frontier.png").stat().st_size > 10_000
    text = " ".join(printed.split())
    assert "paired differences against full-hot at 4 backfill accelerators" in text
    assert "which policy at which budget" in text and "1 backfill accelerators: none" in text
    assert "none at 4 backfill accelerators (seed 4): R@1 area" in text
