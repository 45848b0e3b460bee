"""The service timeline (SPEC section 11): its identities with the session engine, its costs, its clock."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import cvstream.timeline
from conftest import GIVEN_THROUGHPUT as GIVEN
from conftest import tiny_scenario
from conftest import tiny_timeline as timeline
from cvstream.gallery import Gallery
from cvstream.scenario import GallerySpec
from cvstream.simulator import Simulator
from cvstream.timeline import Timeline, run_timeline
from cvstream.timeline.service import TIMELINE_COLUMNS, search_two_spaces, summarize


def run(policy="none", *, out=None, budget=None, **keys):
    """(simulator, timeline.parquet's frame, the summary) of the tiny scenario with a timeline section."""
    backfill = {"policy": policy, **({"budget": budget} if budget is not None else {})}
    sim = Simulator(tiny_scenario(timeline=timeline(**keys), backfill=backfill), out_dir=out, write=out is not None)
    result = cvstream.timeline.run(sim)  # a scenario with a timeline section runs through it
    return sim, result.timeline, result.timeline_summary


def mixed_r1(sim) -> pd.Series:
    m = sim.result().metrics
    rows = m[(m.gallery_view == "mixed") & (m.metric == "recall@1") & (m.subset == "all")]
    return rows.set_index("session").value


def after_deploys(frame: pd.DataFrame) -> pd.DataFrame:
    """The evaluation right after each deploy, indexed by the deployed generation."""
    rows = []
    for i in np.flatnonzero(frame.kind == "deploy"):
        following = frame.iloc[i + 1 :]
        evaluation = following[following.kind == "evaluate"].iloc[0]
        assert evaluation.time_hours == frame.time_hours.iloc[i] and json.loads(evaluation.detail)["why"] == "deploy"
        rows.append(evaluation)
    return pd.DataFrame(rows).set_index("serving_generation")


def test_at_deploy_hot_none_equals_the_engines_mixed_recall():
    sim, frame, _ = run("none", ingest="at-deploy", deploy="hot")
    expected = mixed_r1(sim)
    got = after_deploys(frame).r1_all
    assert list(got.index) == [0, 1, 2]
    for t in range(3):
        assert got[t] == expected[t]  # the same vectors, the same queries: equal, not close


def test_after_backfill_full_switch_equals_the_full_backfill_run():
    sim, frame, _ = run("full", ingest="at-deploy", deploy="after-backfill")
    expected = mixed_r1(sim)  # this learning run is the full-backfill run
    got = after_deploys(frame)
    for t in range(3):
        assert got.r1_all[t] == expected[t]
        assert got.backfilled_fraction[t] == 1.0 and got.r1_full[t] == got.r1_all[t]


def test_backfill_cost_span_and_rate_are_exact():
    sim, frame, summary = run("full", ingest="at-deploy", deploy="after-backfill")
    acc, rate = 3, GIVEN["embed"]
    chunks = frame[frame.kind == "backfill_chunk"]
    items = int(chunks.groupby("target_generation").backfilled_items.max().sum())
    assert items > 0
    assert summary["accel_hours_backfill"] == pytest.approx(items / (rate * 3600), rel=1e-12)
    for target, rows in chunks.groupby("target_generation"):
        start = frame[(frame.kind == "backfill_start") & (frame.target_generation == target)].time_hours.iloc[0]
        done = frame[(frame.kind == "backfill_done") & (frame.target_generation == target)].time_hours.iloc[0]
        n = rows.backfilled_items.max()
        assert done - start == pytest.approx(n / (rate * 3600) / acc, rel=1e-12)  # the span: accelerator-hours / accelerators
        # The re-embedded count rises at exactly accelerators x throughput items per second.
        assert np.allclose(rows.backfilled_items.to_numpy(), (rows.time_hours.to_numpy() - start) * 3600 * acc * rate, rtol=1e-9)
        # after-backfill: the generation serves from the instant its last chunk is in.
        deploy = frame[(frame.kind == "deploy") & (frame.session == target)].time_hours.iloc[0]
        assert deploy == done == rows.time_hours.max()
        assert (frame[(frame.time_hours < deploy) & (frame.time_hours >= start)].serving_generation < target).all()


def test_every_item_is_searchable_from_its_arrival_once_and_only_once():
    sim, frame, _ = run("full", ingest="continuous", deploy="hot")
    arrivals = []
    for t in range(len(sim.stream)):
        n = len(sim.stream[t].gallery_ids)
        arrivals.append((t - 1) * 10 + np.arange(1, n + 1) / n * 10)
    arrivals = np.sort(np.concatenate(arrivals))
    first_deploy = frame[frame.kind == "deploy"].time_hours.min()
    served = frame[frame.serving_generation >= 0]
    expected = np.searchsorted(arrivals, np.maximum(served.time_hours.to_numpy(), first_deploy), side="right")
    assert (served.gallery_items.to_numpy() == expected).all()  # arrived = searchable, deploys included
    assert served.gallery_items.is_monotonic_increasing  # nothing ever disappears
    # The final gallery holds each arrived sample once.
    sim2 = Simulator(tiny_scenario(timeline=timeline(), backfill={"policy": "full"}), write=False)
    with sim2.running():
        line = Timeline(sim2)
        line.run()
        ids = line.gallery.sample_ids_of(np.arange(len(line.gallery)))
    assert len(np.unique(ids)) == len(ids) == len(np.concatenate([s.gallery_ids for s in sim2.stream]))


def test_a_deploy_during_a_backfill_retargets_it():
    # Sessions every half hour; re-embedding the 120 items stale at the second deploy takes 120 / (0.05 x 3600) = 0.67 h
    # on one accelerator: the third deploy comes first.
    sim, frame, _ = run("full", ingest="continuous", deploy="hot", session_interval_hours=0.5, eval_every_hours=0.25,
                        accelerators={"train": 2, "backfill": 1, "serve": 1})
    retargets = frame[frame.kind == "backfill_retarget"]
    assert len(retargets) >= 1
    abandoned = json.loads(retargets.detail.iloc[0])["abandoned"]
    later = frame[(frame.kind == "backfill_start") & (frame.time_hours >= retargets.time_hours.iloc[0])]
    assert (later.target_generation > abandoned).all() and len(later)


def test_continuous_hot_new_queries_see_stale_items_until_the_backfill_completes():
    _, frame, summary = run("full", ingest="continuous", deploy="hot")
    ev = frame[(frame.kind == "evaluate") & frame.r1_all.notna()]
    done = ev[ev.detail.map(lambda d: json.loads(d)["why"]) == "backfill_done"]
    assert len(done) == 2 and (done.r1_all == done.r1_full).all()  # complete: the gallery is the reference
    assert summary["censored_deploys"] == 0 and summary["recovered_deploys"] == summary["deploys"] == 3
    assert set(TIMELINE_COLUMNS) == set(frame.columns)


def test_dual_queries_bill_two_forwards_while_the_gallery_is_mixed():
    # The tiny gallery's search costs ~1e-12 of a forward at the default accelerator: forwards are what is billed here.
    _, new, s_new = run("full", ingest="continuous", deploy="hot", queries="new", queries_per_hour=100)
    _, dual, s_dual = run("full", ingest="continuous", deploy="hot", queries="dual", queries_per_hour=100)
    first = new[new.kind == "deploy"].time_hours.min()
    horizon = s_new["horizon_hours"]
    mixed_hours = sum(e - s for s, e in _mixed_spans(dual))
    assert s_new["accel_hours_serve"] == pytest.approx((horizon - first) * 100 / GIVEN["embed"] / 3600, rel=1e-9)
    assert s_dual["accel_hours_serve"] - s_new["accel_hours_serve"] == pytest.approx(mixed_hours * 100 / GIVEN["embed"] / 3600, rel=1e-9)
    # Dual answers equal new answers wherever nothing is stale.
    clean = (new.kind == "evaluate") & (new.stale_items == 0) & new.r1_all.notna()
    assert np.array_equal(new[clean].r1_all.to_numpy(), dual[clean].r1_all.to_numpy())


def _mixed_spans(frame):
    """Spans between a deploy onto a stale gallery and the completion of its backfill."""
    spans, start = [], None
    for row in frame.itertuples():
        if row.kind == "deploy" and row.stale_items > 0:
            start = row.time_hours
        if row.kind == "backfill_done" and start is not None:
            spans.append((start, row.time_hours))
            start = None
    return spans


def test_summary_figures_on_a_hand_made_timeline():
    def ev(t, r1, full, why="scheduled", flips=0):
        return {"time_hours": t, "kind": "evaluate", "r1_all": r1, "r1_full": full, "r1_best": full + 0.05, "negative_flips": flips,
                "serving_generation": 0, "detail": json.dumps({"why": why})}

    rows = [
        {"time_hours": 0.0, "kind": "deploy"}, ev(0.0, 0.5, 0.5, "deploy"), ev(4.0, 0.6, 0.6, flips=2),
        ev(10.0, 0.62, 0.6, "before_switch", flips=1),  # the dip's baseline: the old state on the new query set
        {"time_hours": 10.0, "kind": "deploy"}, ev(10.0, 0.3, 0.7, "deploy", flips=5), ev(12.0, 0.2, 0.7, flips=3),
        ev(16.0, 0.695, 0.7),
        ev(20.0, 0.65, 0.65, "before_switch"),
        {"time_hours": 20.0, "kind": "deploy"}, ev(20.0, 0.4, 0.8, "deploy", flips=4), ev(26.0, 0.5, 0.8),  # never recovers
    ]
    frame = pd.DataFrame(rows).reindex(columns=TIMELINE_COLUMNS)
    for job in ("train", "backfill", "serve", "ingest", "adapter"):
        frame[f"accel_hours_{job}"] = 1.0
    s = summarize(frame, horizon=30.0, price_per_hour=2.5)
    # The before_switch rows take no time; everything else holds until the next evaluation.
    area = (0.5 * 4 + 0.6 * 6 + 0.3 * 2 + 0.2 * 4 + 0.695 * 4 + 0.4 * 6 + 0.5 * 4) / 30
    assert s["quality_time_area"] == pytest.approx(area)
    assert s["regret_area"] == pytest.approx((0.55 * 4 + 0.65 * 6 + 0.75 * 10 + 0.85 * 10) / 30 - area)
    # Recovery: over the deploys that recovered (0 h and 6 h); the third is censored at the horizon, 10 h, never 0.
    assert s["recovery_hours_mean"] == pytest.approx(3.0) and s["recovery_hours_max"] == pytest.approx(6.0)
    assert s["recovered_deploys"] == 2 and s["censored_deploys"] == 1 and s["censored_hours_mean"] == pytest.approx(10.0)
    third = s["per_deploy"][2]
    assert third["censored"] and not third["recovered"] and third["recovery_hours"] == pytest.approx(10.0)
    # The dip against the state at the switch (0.62, not the older 0.6), down to the low before recovery (0.2).
    assert s["per_deploy"][1]["dip"] == pytest.approx(0.62 - 0.2) and s["per_deploy"][2]["dip"] == pytest.approx(0.65 - 0.4)
    assert s["per_deploy"][0]["dip"] is None and s["worst_dip"] == pytest.approx(0.42)
    # Negative flips by deploy: the before_switch look belongs to the deploy that served until it.
    assert [d["negative_flips"] for d in s["per_deploy"]] == [3, 8, 4] and s["negative_flips"] == 15
    assert s["cost_total"] == pytest.approx(5 * 2.5) and s["cost_serve"] == pytest.approx(2.5)


def _evaluations(frame: pd.DataFrame) -> pd.DataFrame:
    """The evaluation rows keyed by (time, why), the adapter's own look and the closing one at the horizon left out."""
    ev = frame[(frame.kind == "evaluate") & frame.r1_all.notna()].copy()
    ev["why"] = ev.detail.map(lambda d: json.loads(d)["why"])
    return ev[~ev.why.isin(["adapter_ready", "horizon"])].set_index(["time_hours", "why"])


def test_adapter_queries_answer_like_new_ones_wherever_nothing_is_stale_and_differ_while_mixed():
    # Never backfilled: the gallery stays mixed, and the adapter (fitted on 100 re-embedded pairs, 0.19 h here) serves.
    _, new, _ = run("none", ingest="continuous", deploy="hot", queries="new")
    _, adapted, summary = run("none", ingest="continuous", deploy="hot", queries="adapter")
    new, adapted_ev = _evaluations(new), _evaluations(adapted)
    both = new.index.intersection(adapted_ev.index)  # the adapter's own look shifts the next `changed` ones
    assert len(both) > 0.8 * len(new)
    new, adapted_ev = new.loc[both], adapted_ev.loc[both]
    first_ready = adapted[adapted.kind == "adapter_ready"].time_hours.min()
    times = new.index.get_level_values("time_hours")
    clean, mixed = (new.stale_items == 0) | (times < first_ready), (new.stale_items > 0) & (times > first_ready)
    assert np.array_equal(new[clean].r1_all.to_numpy(), adapted_ev[clean].r1_all.to_numpy())
    assert mixed.any() and not np.array_equal(new[mixed].map_all.to_numpy(), adapted_ev[mixed].map_all.to_numpy())
    # The adapter is a job: fitted after each deploy onto an older gallery, ready after its span, billed to its own job.
    ready = adapted[adapted.kind == "adapter_ready"]
    assert len(ready) >= 1 and summary["accel_hours_adapter"] > 0
    deploy_at = adapted[(adapted.kind == "deploy") & (adapted.session == ready.session.iloc[0])].time_hours.iloc[0]
    assert ready.time_hours.iloc[0] > deploy_at


@pytest.mark.parametrize("queries", ["new", "dual", "adapter"])
def test_a_model_upgrade_widens_the_timelines_gallery_without_restoring_old_items(queries):
    model = {"backbone": "convnet", "embedding_dim": 16, "width": 4, "upgrades": {1: {"backbone": "convnet", "embedding_dim": 24, "width": 6}}}
    sim = Simulator(tiny_scenario(model=model, timeline=timeline(queries=queries), backfill={"policy": "none"}, method={"name": "bct"}),
                    write=False)
    line = run_timeline(sim)
    frame = line.frame
    evaluated = frame[(frame.kind == "evaluate") & frame.r1_all.notna()]
    assert evaluated.serving_generation.max() == 2 and evaluated.r1_all.between(0, 1).all()
    deploys = frame[frame.kind == "deploy"]
    assert list(deploys.session) == [0, 1, 2]
    gallery = line.gallery
    assert {int(segment.d) for segment in gallery.segments} == {16, 24}  # session 0's items stay 16-d, never stored again
    assert gallery.dim == 24 and len(gallery) == frame.gallery_items.iloc[-1]


@pytest.mark.parametrize(("narrow_queries", "expected"), [("pad", [1, 2, 0]), ("normalize", [0, 1, 2])])
def test_dual_and_adapter_queries_match_narrower_items_as_gallery_narrow_queries_says(narrow_queries, expected):
    """A 4-d query of an older generation (`other`) scores generation 0's 2-d item 0.5 padded and 1.0 as a cosine in the
    older space, generation 1's item 0.993 either way; the serving query scores its own generation's item 0.95."""
    gallery = Gallery(2, GallerySpec(gpu=False, narrow_queries=narrow_queries))
    gallery.add(np.array([[1.0, 0.0]], np.float32), sample_ids=np.array([0]), class_ids=np.array([0]), session=0, generation=0)
    gallery.widen(4)
    for g, vector in ((1, [0.6, 0.0, 0.8, 0.0]), (2, [0.0, 0.95, 0.0, 0.0975**0.5])):
        gallery.add(np.array([vector], np.float32), sample_ids=np.array([g]), class_ids=np.array([g]), session=g, generation=g)
    queries, other = np.array([[0.0, 1.0, 0.0, 0.0]], np.float32), np.array([[0.5, 0.0, 0.75**0.5, 0.0]], np.float32)
    found = search_two_spaces(gallery, queries, other, own=np.array([2]), older=np.array([0, 1]), k=5)
    assert found.tolist() == [expected]
