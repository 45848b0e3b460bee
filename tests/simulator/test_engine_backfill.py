"""Backfill policies inside the engine: what they change, what they cost, and the backfill curve."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_scenario

from cvstream.gallery import Gallery
from cvstream.simulator import Simulator
from cvstream.simulator.hooks import Hook


class Snapshots(Hook):
    """The stored vectors and metadata at the end of every session."""

    def __init__(self):
        self.sessions = []

    def after_session(self, sim, result) -> None:
        meta = sim.gallery.metadata()
        self.sessions.append((meta, sim.gallery.vectors(meta.item_id.to_numpy())))


def run(tmp_path, name: str, **sections):
    snapshots = Snapshots()
    result = Simulator(tiny_scenario(**sections), out_dir=tmp_path / name, hooks=[snapshots]).run()
    return result, snapshots


@pytest.fixture(scope="module")
def none_and_full(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policies")
    none = run(tmp, "none", method={"name": "finetune"}, backfill={"policy": "none", "curve_session": 2})
    full = run(tmp, "full", method={"name": "finetune"}, backfill={"policy": "full"})
    return none, full


def test_none_never_changes_a_stored_vector(none_and_full):
    (result, snapshots), _ = none_and_full
    for (_, before), (_, after) in zip(snapshots.sessions, snapshots.sessions[1:]):
        assert np.array_equal(after[: len(before)], before)  # bit for bit
    assert (result.costs.query("phase == 'backfill'").backbone_forwards == 0).all()
    assert result.gallery.backfilled_at.isna().all()


def test_full_leaves_every_item_at_the_newest_generation_with_one_forward_per_item_per_update(none_and_full):
    _, (result, snapshots) = none_and_full
    for t, (meta, _) in enumerate(snapshots.sessions):
        assert (meta.generation == t).all()
        assert list(meta.backfilled_at[meta.session_added < t]) == [t] * int((meta.session_added < t).sum())
    costs = result.costs.set_index(["session", "phase"])
    size = 0
    for t in range(3):
        added = int(costs.loc[(t, "index"), "backbone_forwards"])
        assert int(costs.loc[(t, "backfill"), "backbone_forwards"]) == size  # every older item, once
        size += added
    assert len(result.gallery) == size


def test_the_backfill_curve_runs_from_the_mixed_gallery_to_the_full_backfill(none_and_full, tmp_path):
    (none, _), (full, _) = none_and_full
    curve = pd.read_parquet(none.run_dir / "backfill_curve.parquet")
    r1 = curve[(curve.metric == "recall@1") & (curve.subset == "all")].sort_values("fraction")
    assert list(r1.fraction) == pytest.approx([i / 10 for i in range(11)])
    assert list(r1.items_backfilled) == [round(f * 120) for f in r1.fraction]  # 120 items were stale at session 2
    assert r1.area.iloc[0] == pytest.approx(r1.value.mean())
    n = int(r1.n_queries.iloc[0])
    mixed = none.recall_table(1).loc[2, "all"]
    fresh = full.recall_table(1).loc[2, "all"]
    # 0%: the gallery as the none run searched it; 100%: the gallery a full backfill leaves (same finetune models).
    assert abs(r1.value.iloc[0] - mixed) <= 1 / n + 1e-9
    assert abs(r1.value.iloc[-1] - fresh) <= 1 / n + 1e-9


def test_a_mixed_gallery_gets_calibration_rows_and_a_gallery_of_one_generation_none(none_and_full):
    (none, _), (full, _) = none_and_full
    m = none.metrics
    calibration = m[m.metric.str.startswith("calibration_")]
    assert set(calibration.gallery_view) == {"mixed"} and set(calibration.subset) == {"all"}
    assert sorted(calibration.session.unique()) == [1, 2]  # session 0: every item is generation 0's
    for t in (1, 2):
        rows = calibration[calibration.session == t].set_index("metric")
        assert list(rows.index) == ["calibration_old_positive", "calibration_new_negative_top"]
        assert rows.value.between(-1, 1).all()
        # Disjoint sessions under policy none: exactly the old classes' queries have older positives and newer negatives.
        old = m[(m.session == t) & (m.gallery_view == "mixed") & (m.subset == "old") & (m.metric == "recall@1")]
        assert (rows.n_queries == old.n_queries.item()).all()
    assert not full.metrics.metric.str.startswith("calibration_").any()


def test_partial_re_embeds_exactly_its_budget(tmp_path):
    result, snapshots = run(tmp_path, "partial", backfill={"policy": "partial", "budget": 7, "order": "oldest"})
    costs = result.costs.query("phase == 'backfill'").set_index("session")
    assert list(costs.backbone_forwards) == [0, 7, 7]
    meta, stored = snapshots.sessions[-1]
    assert (meta.backfilled_at == 2).sum() == 7 and (meta.backfilled_at == 1).sum() <= 7
    # Oldest first: at session 2 the seven re-embedded items were generation-0 items.
    before = snapshots.sessions[1][0]
    assert (before.generation[meta.item_id[meta.backfilled_at == 2]] == 0).all()
    gallery = Gallery.load(result.run_dir)
    assert np.array_equal(gallery.vectors(meta.item_id.to_numpy()), stored)


def test_transform_maps_the_stale_items_and_counts_its_forwards(tmp_path):
    backfill = {"policy": "transform", "train_items": 20, "epochs": 5, "hidden": 16, "budget": 4, "order": "uncertainty"}
    result, snapshots = run(tmp_path, "transform", backfill=backfill)
    transform = result.costs.query("phase == 'transform'").set_index("session")
    backfill_costs = result.costs.query("phase == 'backfill'").set_index("session")
    assert list(transform.index) == [1, 2] and list(transform.backbone_forwards) == [20, 20]
    assert list(transform["items"]) == [60 - 20, 120 - 20]  # every other stale item is mapped
    assert list(backfill_costs.backbone_forwards) == [0, 4, 4]
    meta, stored = snapshots.sessions[-1]
    assert ((meta.transformed_at == 2) | (meta.backfilled_at == 2) | (meta.session_added == 2)).all()
    assert (meta.generation[meta.transformed_at == 2] < 2).all()
    gallery = Gallery.load(result.run_dir)
    classes = np.unique(meta.class_id)
    means, _ = gallery.class_means(classes)
    expected = np.stack([stored[meta.class_id.to_numpy() == c].mean(0) for c in classes])
    np.testing.assert_allclose(means, expected, atol=1e-6)
    events = result.events.query("kind == 'transform' and session == 2").detail.iloc[0]
    assert "heldout_error_psi" in events
