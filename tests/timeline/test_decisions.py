"""The timeline's decision figures (SPEC section 11): quality exact between instants, the dip at the switch, the best
reference and regret, negative flips, and what serving costs (search, capacity, memory, money)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cvstream.timeline
from conftest import GIVEN_THROUGHPUT as GIVEN
from conftest import tiny_scenario
from conftest import tiny_timeline as timeline
from cvstream.simulator import Simulator


def run(policy="full", **keys):
    sim = Simulator(tiny_scenario(timeline=timeline(**keys), backfill={"policy": policy}), write=False)
    result = cvstream.timeline.run(sim)
    return result.timeline, result.timeline_summary


def why(frame):
    return frame.detail.map(lambda d: json.loads(d).get("why", ""))


def test_the_area_at_the_defaults_is_within_0002_of_ten_times_finer_evaluation():
    _, default = run("full", eval_every_hours=2.0)  # eval_min_change at its default, 0.01
    _, finer = run("full", eval_every_hours=0.2, eval_min_change=0.001)
    assert abs(default["quality_time_area"] - finer["quality_time_area"]) <= 0.002
    # Without the change rule, a 2-hourly schedule misses what the backfill's chunks change in between.
    _, coarse = run("full", eval_every_hours=2.0, eval_min_change=1.0)
    assert abs(coarse["quality_time_area"] - finer["quality_time_area"]) > 0.002


def test_a_chunk_that_changes_more_than_eval_min_change_is_evaluated_at_its_instant():
    frame, _ = run("full", ingest="at-deploy")
    kinds = frame.kind.tolist()
    chunks = [i for i, kind in enumerate(kinds) if kind == "backfill_chunk"]
    assert chunks
    for i in chunks:  # 7 items a chunk of a gallery of at most 144: always more than 1%
        following = frame.iloc[i + 1] if frame.kind.iloc[i + 1] != "backfill_done" else frame.iloc[i + 2]
        assert following.kind == "evaluate" and following.time_hours == frame.time_hours.iloc[i]
        assert json.loads(following.detail)["why"] in ("changed", "backfill_done")


def test_the_dip_is_measured_at_the_switch_on_the_query_set_after_it():
    frame, summary = run("none", ingest="at-deploy")  # a deploy adds its classes: the query set grows at the switch
    reasons = why(frame)
    for i in np.flatnonzero(frame.kind == "deploy")[1:]:
        last = frame.index[(frame.index < i) & (frame.kind == "evaluate")][-1]  # at-deploy: then the arrivals' row
        before = frame.loc[last]
        after = frame[(frame.index > i) & (frame.kind == "evaluate")].iloc[0]
        assert reasons.loc[last] == "before_switch" and before.time_hours == frame.time_hours.iloc[i]
        assert before.serving_generation == after.serving_generation - 1
        assert before.n_queries == after.n_queries  # the same queries on both sides of the switch
    dips = [d["dip"] for d in summary["per_deploy"][1:]]
    assert all(d is not None for d in dips) and summary["worst_dip"] == pytest.approx(max(dips))


def test_r1_best_is_the_newest_generation_fully_backfilled():
    hot, hot_summary = run("full", ingest="continuous", deploy="hot")
    evaluated = hot[(hot.kind == "evaluate") & hot.r1_all.notna() & (why(hot) != "before_switch")]
    assert np.array_equal(evaluated.r1_best.to_numpy(), evaluated.r1_full.to_numpy(), equal_nan=True)  # hot: the newest trained generation is the serving one
    waited, summary = run("full", ingest="continuous", deploy="after-backfill")
    reasons = why(waited)
    for i in np.flatnonzero(waited.kind == "deploy")[1:]:
        before, after = waited.iloc[i - 1], waited.iloc[i + 1]
        assert reasons.iloc[i - 1] == "before_switch" and reasons.iloc[i + 1] == "deploy"
        # Right before the switch the newest generation has every item re-embedded: the best is what the switch serves.
        assert before.r1_best == after.r1_all == after.r1_full
    waiting = waited[(waited.kind == "evaluate") & (waited.target_generation > waited.serving_generation)]
    assert len(waiting) and (waiting.r1_best != waiting.r1_full).any()
    assert summary["regret_area"] > 0 and summary["best_area"] == pytest.approx(summary["quality_time_area"] + summary["regret_area"])


def test_negative_flips_count_queries_right_at_the_last_look_and_wrong_now():
    frame, summary = run("none", ingest="continuous", deploy="hot")
    ev = frame[(frame.kind == "evaluate") & frame.r1_all.notna()].reset_index(drop=True)
    assert ev.negative_flips.iloc[0] == 0  # nothing was right before the first look
    unchanged = (ev.gallery_items.diff() == 0) & (ev.serving_generation.diff() == 0) & (ev.stale_items.diff() == 0)
    assert unchanged.any() and (ev.negative_flips[unchanged] == 0).all() and (ev.r1_all.diff()[unchanged] == 0).all()
    assert ev.negative_flips.sum() > 0
    # A flip can only lose what was right: never more than the queries right at the last look.
    right_before = (ev.r1_all.shift() * ev.n_queries.shift()).fillna(0)
    assert (ev.negative_flips <= right_before + 1e-9).all()
    assert summary["negative_flips"] == int(frame.negative_flips.sum()) == sum(d["negative_flips"] for d in summary["per_deploy"])


def test_serving_bills_each_query_its_forward_and_its_search_over_the_services_gallery():
    scale, qph, dim, tflops, use = 1e11, 500.0, 16, 100.0, 0.5
    frame, summary = run("full", ingest="continuous", deploy="hot", item_scale=scale, queries_per_hour=qph,
                         accelerator={"tflops": tflops, "utilization": use})
    served = frame[frame.serving_generation >= 0]
    flops = 2.0 * served.gallery_items.to_numpy() * scale * dim  # flat: N x d multiply-adds
    assert np.allclose(served.search_flops_per_query.to_numpy(), flops, rtol=1e-12)
    seconds = 1 / GIVEN["embed"] + flops / (tflops * 1e12 * use)
    spans = np.diff(np.append(served.time_hours.to_numpy(), summary["horizon_hours"]))
    assert summary["accel_hours_serve"] == pytest.approx(np.sum(spans * qph * seconds) / 3600, rel=1e-9)
    assert (flops / (tflops * 1e12 * use) > 0.01 / GIVEN["embed"]).any()  # the search is not negligible here
    # Utilisation: the traffic against one accelerator's capacity (1 / seconds a query).
    assert np.allclose(served.serve_utilization.to_numpy(), qph / 3600 * seconds, rtol=1e-12)
    assert bool(summary["warnings"]) == (served.serve_utilization.max() > 1)


def test_traffic_beyond_the_serving_capacity_runs_and_says_so():
    frame, summary = run("none", queries_per_hour=3600 * 1.0)  # one query a second against 0.05 forwards a second
    assert summary["serve_utilization_peak"] == pytest.approx(20.0, rel=1e-3) and summary["serve_over_capacity_hours"] > 0
    assert len(summary["warnings"]) == 1 and "exceeds the serving capacity" in summary["warnings"][0]
    assert frame.r1_all.notna().any()  # the run went on


def test_memory_counts_both_generations_vectors_while_a_reindex_waits_for_its_switch():
    scale, dim = 1000.0, 16
    hot, hot_summary = run("full", deploy="hot", item_scale=scale)
    assert (hot.memory_bytes == hot.gallery_bytes).all()  # re-embedded in place
    served = hot[hot.serving_generation >= 0]
    assert np.allclose(served.gallery_bytes, served.gallery_items * scale * 4 * dim)
    waited, summary = run("full", deploy="after-backfill", item_scale=scale)
    backfilling = waited[(waited.target_generation > waited.serving_generation) & (waited.backfilled_items > 0)]
    assert len(backfilling) and (backfilling.memory_bytes > backfilling.gallery_bytes).all()
    extra = backfilling.memory_bytes - backfilling.gallery_bytes
    assert np.allclose(extra, backfilling.backfilled_items * scale * 4 * dim)  # each re-embedded vector held once more
    assert summary["memory_bytes_peak"] == pytest.approx(waited.memory_bytes.max())
    assert summary["memory_bytes_peak"] > hot_summary["memory_bytes_peak"]


def test_training_scales_by_train_scale_alone_and_money_follows_accelerator_hours():
    _, one = run("none", item_scale=1.0, train_scale=1.0)
    _, ten = run("none", item_scale=50.0, train_scale=10.0, accelerator={"tflops": 400, "utilization": 0.35, "price_per_hour": 3.0})
    assert ten["accel_hours_train"] == pytest.approx(10 * one["accel_hours_train"], rel=1e-12)
    assert ten["accel_hours_ingest"] == pytest.approx(50 * one["accel_hours_ingest"], rel=1e-12)
    assert ten["cost_total"] == pytest.approx(3.0 * ten["accel_hours_total"]) and ten["cost_train"] == pytest.approx(3.0 * ten["accel_hours_train"])
    assert "cost_total" not in one


def test_dual_queries_bill_a_search_of_each_part_while_the_gallery_is_mixed():
    # IVF: each part's search pays its own coarse assignment (nlist x d) besides its share of the lists.
    nlist, nprobe, dim, scale = 4, 2, 16, 1000.0
    sim = Simulator(tiny_scenario(timeline=timeline(queries="dual", item_scale=scale), backfill={"policy": "none"},
                                  gallery={"index": "ivf", "nlist": nlist, "nprobe": nprobe}), write=False)
    frame = cvstream.timeline.run(sim).timeline
    served = frame[frame.serving_generation >= 0]

    def search(n):  # one IVF search over n simulated items; an empty part costs nothing
        return np.where(n > 0, 2.0 * (nlist * dim + nprobe * n * scale / nlist * dim), 0.0)

    total, stale = served.gallery_items.to_numpy(), served.stale_items.to_numpy()
    mixed = (served.serving_generation >= 1).to_numpy() & (stale > 0)
    expected = np.where(mixed, search(total - stale) + search(stale), search(total))
    assert mixed.any() and (~mixed).any() and (mixed & (stale < total)).any()
    assert np.allclose(served.search_flops_per_query.to_numpy(), expected, rtol=1e-12)


def test_memory_is_billed_provisioned_or_as_used_and_counted_in_the_total():
    """Waiting for a reindex holds both generations' vectors while it runs: priced per TB-hour, its memory costs what
    hot deploy's does not. Provisioned bills the peak for every hour; used, each hour's memory."""
    scale, price, per_hour = 1000.0, 5e6, 3.0  # a price that makes the tiny gallery's TB-hours show
    frame, plain = run("full", deploy="after-backfill", item_scale=scale)
    rows = frame[frame.serve_utilization.notna()]
    spans = np.diff(np.append(rows.time_hours.to_numpy(), plain["horizon_hours"]))
    used = float(np.sum(rows.memory_bytes.to_numpy() * spans)) / 1e12
    assert plain["memory_tb_hours_used"] == pytest.approx(used, rel=1e-12)
    assert plain["memory_tb_hours_provisioned"] == pytest.approx(rows.memory_bytes.max() * spans.sum() / 1e12, rel=1e-12)
    assert plain["memory_tb_hours_used"] < plain["memory_tb_hours_provisioned"]  # the second copy lives only while backfilling
    assert "cost_memory" not in plain and "cost_total" not in plain  # nothing priced: no money
    accelerator = {"tflops": 400, "utilization": 0.35, "price_per_hour": per_hour}
    _, provisioned = run("full", deploy="after-backfill", item_scale=scale, accelerator=accelerator, memory={"price_per_tb_hour": price})
    assert provisioned["cost_memory"] == pytest.approx(price * plain["memory_tb_hours_provisioned"], rel=1e-12)
    assert provisioned["cost_total"] == pytest.approx(per_hour * provisioned["accel_hours_total"] + provisioned["cost_memory"], rel=1e-12)
    _, as_used = run("full", deploy="after-backfill", item_scale=scale, memory={"price_per_tb_hour": price, "billing": "used"})
    assert as_used["cost_memory"] == pytest.approx(price * used, rel=1e-12) and as_used["cost_total"] == as_used["cost_memory"]
    _, hot = run("full", deploy="hot", item_scale=scale, memory={"price_per_tb_hour": price, "billing": "used"})
    assert hot["cost_memory"] < as_used["cost_memory"]  # one copy of the vectors (here both peak at the last gallery)


def test_a_scenario_that_prices_no_memory_keeps_its_digest():
    """The memory section came after timelines were first hashed: at its default it is left out of the digest (runs
    and studies made before read back), and it changes the digest once set."""
    plain = tiny_scenario(timeline=timeline())
    assert "memory" not in plain.to_dict()["timeline"] and plain.to_dict(complete=True)["timeline"]["memory"]["billing"] == "provisioned"
    assert tiny_scenario(timeline=timeline(memory={"billing": "provisioned"})).digest() == plain.digest()
    assert tiny_scenario(timeline=timeline(memory={"price_per_tb_hour": 1.0})).digest() != plain.digest()
