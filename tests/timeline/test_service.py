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
    assert summary["unrecovered_deploys"] == 0 and summary["deploys"] == 3
    assert set(TIMELINE_COLUMNS) == set(frame.columns)


def test_dual_queries_bill_two_forwards_while_the_gallery_is_mixed():
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
    rows = [
        {"time_hours": 0.0, "kind": "deploy"}, {"time_hours": 0.0, "kind": "evaluate", "r1_all": 0.5, "r1_full": 0.5},
        {"time_hours": 4.0, "kind": "evaluate", "r1_all": 0.6, "r1_full": 0.6},
        {"time_hours": 10.0, "kind": "deploy"}, {"time_hours": 10.0, "kind": "evaluate", "r1_all": 0.3, "r1_full": 0.7},
        {"time_hours": 12.0, "kind": "evaluate", "r1_all": 0.2, "r1_full": 0.7},
        {"time_hours": 16.0, "kind": "evaluate", "r1_all": 0.695, "r1_full": 0.7},
    ]
    frame = pd.DataFrame(rows).reindex(columns=TIMELINE_COLUMNS)
    for job in ("train", "backfill", "serve", "ingest"):
        frame[f"accel_hours_{job}"] = 1.0
    s = summarize(frame, horizon=20.0)
    area = (0.5 * 4 + 0.6 * 6 + 0.3 * 2 + 0.2 * 4 + 0.695 * 4) / 20
    assert s["quality_time_area"] == pytest.approx(area)
    assert s["recovery_hours_mean"] == pytest.approx((0 + 6) / 2) and s["recovery_hours_max"] == pytest.approx(6)
    assert s["worst_dip"] == pytest.approx(0.6 - 0.2) and s["unrecovered_deploys"] == 0


def test_adapter_queries_answer_like_new_ones_wherever_nothing_is_stale_and_differ_while_mixed():
    _, new, _ = run("full", ingest="continuous", deploy="hot", queries="new")
    _, adapted, _ = run("full", ingest="continuous", deploy="hot", queries="adapter")
    evaluated = (new.kind == "evaluate") & new.r1_all.notna()
    clean, mixed = evaluated & (new.stale_items == 0), evaluated & (new.stale_items > 0)
    assert np.array_equal(new[clean].r1_all.to_numpy(), adapted[clean].r1_all.to_numpy())
    assert mixed.any() and not np.array_equal(new[mixed].map_all.to_numpy(), adapted[mixed].map_all.to_numpy())


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
