"""The cost projection: costs.parquet's forwards and `backbone_flops` -> accelerator-hours for a gallery of N items, as
`report --project-gallery N [--accelerator-tflops T --utilization U]` prints it."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from conftest import tiny_scenario
from cvstream import cli
from cvstream.models.flops import forward_flops
from cvstream.reporting.projection import project_costs
from cvstream.simulator import Simulator, load_run
from cvstream.simulator.tables import Tables


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flops") / "run"
    sim = Simulator(tiny_scenario(backfill={"policy": "full"}, evaluation={"probe_items": 16}), out_dir=out)
    sim.run()
    return sim, out


def test_every_costs_row_holds_the_flops_per_image_of_its_generation(run):
    sim, out = run
    costs = pd.read_parquet(out / "costs.parquet")
    assert costs.backbone_flops.dtype == "int64"
    expected = forward_flops(sim.model, tuple(sim.images.shape[1:]))  # one architecture in this run
    assert expected > 0 and (costs.backbone_flops == expected).all()
    assert set(costs.phase) >= {"train", "index", "backfill", "evaluate"}


def test_projection_scales_the_backfilled_share_of_the_gallery():
    costs = pd.DataFrame(
        [
            {"session": 0, "phase": "index", "backbone_forwards": 100, "transform_forwards": 0, "items": 100, "seconds": 1.0},
            {"session": 0, "phase": "backfill", "backbone_forwards": 0, "transform_forwards": 0, "items": 0, "seconds": 0.0},
            {"session": 1, "phase": "index", "backbone_forwards": 100, "transform_forwards": 0, "items": 100, "seconds": 1.0},
            {"session": 1, "phase": "backfill", "backbone_forwards": 50, "transform_forwards": 0, "items": 50, "seconds": 0.5},
            {"session": 1, "phase": "train", "backbone_forwards": 999, "transform_forwards": 0, "items": 0, "seconds": 99.0},
        ]
    )
    projection = project_costs(costs, 10**9)
    assert list(projection.gallery_items) == [100, 200]
    assert list(projection.backfill_fraction) == [0.0, 0.25]
    assert projection.seconds_per_forward.iloc[0] == pytest.approx(2.5 / 250)  # inference phases only
    assert projection.update_hours.iloc[1] == pytest.approx(0.25 * 10**9 * 0.01 / 3600)
    given = project_costs(costs, 1000, seconds_per_forward=3.6)
    assert given.update_hours.tolist() == pytest.approx([0.0, 0.25])


def test_projection_scales_only_the_mapping_part_of_a_transform():
    costs = pd.DataFrame(
        [
            {"session": 0, "phase": "index", "backbone_forwards": 100, "transform_forwards": 0, "items": 100, "seconds": 1.0},
            {"session": 1, "phase": "index", "backbone_forwards": 100, "transform_forwards": 0, "items": 100, "seconds": 1.0},
            {"session": 1, "phase": "transform", "backbone_forwards": 20, "transform_forwards": 580, "items": 80, "seconds": 3.0},
        ]
    )
    events = pd.DataFrame({"session": [1], "kind": ["transform"], "detail": ['{"apply_seconds": 0.08, "mapped": 80}']})
    projection = project_costs(costs, 10**6, events=events).set_index("session")
    assert projection.loc[1, "mapped_fraction"] == pytest.approx(0.4)
    assert projection.loc[1, "seconds_per_transform_forward"] == pytest.approx(0.001)
    # 2.92 s fixed (pairs and psi's training) + 0.4 x 10^6 items x 1 ms.
    assert projection.loc[1, "transform_hours"] == pytest.approx((2.92 + 400.0) / 3600)
    assert projection.loc[1, "backfill_hours"] == 0


def test_projection_with_an_accelerator_profile_is_flops_over_the_sustained_rate():
    costs = pd.DataFrame({
        "session": [0, 0, 1, 1, 1], "phase": ["index", "train", "index", "backfill", "transform"],
        "backbone_forwards": [100, 300, 100, 50, 10], "transform_forwards": [0, 0, 0, 0, 0], "items": [100, 300, 100, 50, 0],
        "seconds": [1.0, 9.0, 1.0, 0.5, 0.2], "backbone_flops": [2_000_000_000] * 5,
    })
    projection = project_costs(costs, 10**9, accelerator=(100.0, 0.5)).set_index("session")
    seconds_per_forward = 2e9 / (100e12 * 0.5)  # 4e-5 s
    assert projection.seconds_per_forward.tolist() == pytest.approx([seconds_per_forward] * 2, rel=1e-12)
    # session 1: 50 of 200 items backfilled -> a quarter of 10^9, plus the 10 pairs psi learnt from, at the profile's rate
    assert projection.loc[1, "backfill_hours"] == pytest.approx((0.25 * 10**9 + 10) * seconds_per_forward / 3600, rel=1e-12)
    assert projection.loc[0, "backfill_hours"] == 0
    assert projection.forward_rate.iloc[0] == "backbone_flops / (100 TFLOPS x 0.5 utilization)"
    measured = project_costs(costs, 10**9).set_index("session")
    assert measured.loc[1, "seconds_per_forward"] == pytest.approx(2.5 / 250)  # the run's own rate otherwise
    assert measured.forward_rate.iloc[0] == "measured on this machine"


def test_report_prints_the_rate_it_projected_with(run, capsys):
    _, out = run
    flops = int(pd.read_parquet(out / "costs.parquet").backbone_flops.iloc[0])
    args = ["report", str(out), "--project-gallery", "1e6", "--accelerator-tflops", "100", "--utilization", "0.5"]
    assert cli.main(args) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert f"{flops / (100e12 * 0.5):.2e} s per backbone forward (backbone_flops / (100 TFLOPS x 0.5 utilization))" in printed
    assert cli.main(["report", str(out), "--project-gallery", "1e6"]) == 0
    assert "s per backbone forward (measured on this machine)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("extra, message", [
    (["--utilization", "0.5"], "go together"),
    (["--accelerator-tflops", "100", "--utilization", "1.5"], "at most 1"),
    (["--accelerator-tflops", "100", "--utilization", "0.5", "--seconds-per-forward", "0.1"], "give one"),
])
def test_a_bad_profile_is_a_user_error(run, capsys, extra, message):
    _, out = run
    assert cli.main(["report", str(out), "--project-gallery", "1e6", *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_run_written_before_the_column_still_loads_and_reports(run, tmp_path, capsys):
    _, out = run
    old = tmp_path / "old"
    shutil.copytree(out, old, ignore=shutil.ignore_patterns("report"))
    pd.read_parquet(old / "costs.parquet").drop(columns=["backbone_flops"]).to_parquet(old / "costs.parquet")
    assert "backbone_flops" not in load_run(old).costs.columns
    assert cli.main(["report", str(old), "--project-gallery", "1e6"]) == 0
    capsys.readouterr()
    assert cli.main(["report", str(old), "--project-gallery", "1e6", "--accelerator-tflops", "100", "--utilization", "0.5"]) == 2
    assert "no backbone_flops" in capsys.readouterr().err
    # resuming such a run: its old rows get 0 (not counted), its new rows their count
    tables = Tables()
    tables.restore({"costs": pd.read_parquet(old / "costs.parquet").to_dict("records")})
    assert (tables.frame("costs").backbone_flops == 0).all()
