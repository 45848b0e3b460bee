"""The trunk end to end: a scenario runs, writes its six files, and never touches a stored vector."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, tiny_scenario
from cvstream.scenario import Scenario
from cvstream.simulator import Hook, Simulator, load_run

FILES = ("run.json", "metrics.parquet", "costs.parquet", "events.parquet", "stream.parquet", "gallery.json")


class GallerySnapshots(Hook):
    """Copies every stored vector at the end of each session."""

    def __init__(self):
        self.snapshots: list[tuple[pd.DataFrame, np.ndarray]] = []

    def after_session(self, sim, result):
        meta = sim.gallery.metadata()
        self.snapshots.append((meta, sim.gallery.vectors(meta.item_id.to_numpy()).copy()))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    snapshots = GallerySnapshots()
    result = Simulator(tiny_scenario(), out_dir=out, hooks=[snapshots]).run()
    return out, result, snapshots


def test_run_writes_the_six_files(tiny_run):
    out, result, _ = tiny_run
    for name in FILES:
        assert (out / name).is_file(), name
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "completed"
    assert info["scenario"]["method"]["name"] == "cvs"
    assert info["versions"]["torch"] and info["device"] == "cpu"
    assert info["completed_sessions"] == 3


def test_metrics_have_a_row_per_session_subset_metric(tiny_run):
    out, result, _ = tiny_run
    metrics = pd.read_parquet(out / "metrics.parquet")
    expected_metrics = {"recall@1", "recall@2", "recall@4", "recall@10", "map@r"}
    # other views (probe galleries) and per-class-group subsets have their own tests
    metrics = metrics[(metrics.gallery_view == "mixed") & metrics.subset.isin(["old", "new", "all"]) & metrics.metric.isin(expected_metrics)]
    for t in range(3):
        rows = metrics[metrics.session == t]
        subsets = {"new", "all"} | ({"old"} if t > 0 else set())
        assert set(rows.subset) == subsets
        for subset in subsets:
            assert set(rows[rows.subset == subset].metric) == expected_metrics
    assert len(metrics) == (2 + 3 + 3) * 5
    assert metrics.value.between(0, 1).all()
    assert (metrics.gallery_view == "mixed").all()
    # the new-subset query count is the number of held-out queries of that session's classes
    stream = pd.read_parquet(out / "stream.parquet")
    queries = stream[stream.role == "query"]
    for t in range(3):
        n_new = metrics[(metrics.session == t) & (metrics.subset == "new")].n_queries.iloc[0]
        assert n_new == (queries.session == t).sum()
    pd.testing.assert_frame_equal(load_run(out).metrics, result.metrics)


def test_costs_count_every_forward(tiny_run):
    out, _, _ = tiny_run
    costs = pd.read_parquet(out / "costs.parquet")
    stream = pd.read_parquet(out / "stream.parquet")
    index = costs[costs.phase == "index"].set_index("session")
    for t in range(3):
        assert index.loc[t, "backbone_forwards"] == ((stream.session == t) & (stream.role == "gallery")).sum()
    train = costs[costs.phase == "train"].set_index("session")
    # session 0 has no previous generation; later sessions also run the old model on every batch (cvs)
    assert train.loc[1, "backbone_forwards"] == 2 * train.loc[1, "items"]
    assert train.loc[0, "backbone_forwards"] == train.loc[0, "items"]
    assert (costs.seconds >= 0).all()


def test_policy_none_never_changes_a_stored_vector(tiny_run):
    _, result, snapshots = tiny_run
    last_meta, last_vectors = snapshots.snapshots[-1]
    for meta, vectors in snapshots.snapshots:
        n = len(meta)
        np.testing.assert_array_equal(last_vectors[:n].view(np.uint32), vectors.view(np.uint32))  # bit for bit
        pd.testing.assert_frame_equal(last_meta.iloc[:n], meta)
    gallery = result.gallery
    assert (gallery.generation == gallery.session_added).all()  # each item keeps the generation that embedded it
    assert gallery.backfilled_at.isna().all()
    assert sorted(gallery.generation.unique()) == [0, 1, 2]


def test_stream_roles_are_disjoint_and_complete(tiny_run):
    out, _, _ = tiny_run
    stream = pd.read_parquet(out / "stream.parquet")
    train = set(stream[stream.role == "train"].sample_id)
    queries = set(stream[stream.role == "query"].sample_id)
    assert not train & queries
    assert stream[stream.role == "query"].sample_id.is_unique
    # disjoint: a class arrives in one session only
    assert (stream[stream.role == "train"].groupby("class_id").session.nunique() == 1).all()


def test_same_seed_same_numbers_and_global_rng_untouched(tmp_path):
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()
    first = Simulator(tiny_scenario(), write=False).run()
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    second = Simulator(tiny_scenario(), write=False).run()
    pd.testing.assert_frame_equal(first.metrics.drop(columns="run_id"), second.metrics.drop(columns="run_id"))
    other = Simulator(tiny_scenario(seed=4), write=False).run()
    assert not first.metrics.value.equals(other.metrics.value)


def test_refuses_to_overwrite_a_run(tmp_path):
    from cvstream.errors import UserError

    Simulator(tiny_scenario(stream={"sessions": 1}), out_dir=tmp_path).run()
    with pytest.raises(UserError, match="already holds a run"):
        Simulator(tiny_scenario(stream={"sessions": 1}), out_dir=tmp_path)


def test_untrained_network_retrieves_poorly_on_synthetic():
    """The synthetic data set is not trivial: an untrained network is far below R@1 = 0.5."""
    scenario = Scenario.from_yaml(
        REPO / "experiments" / "demo.yaml",
        overrides=["training.epochs=0", "method=finetune", "stream.sessions=1", "stream.initial_classes=50", "device=cpu"],
    )
    result = Simulator(scenario, write=False).run()
    r1 = result.recall_table(1).loc[0, "all"]
    assert r1 < 0.35


@pytest.mark.slow
def test_demo_learns_and_cvs_keeps_old_classes_better_than_finetune():
    demo = REPO / "experiments" / "demo.yaml"
    base = ["device=cpu", "stream.sessions=3"]
    cvs = Simulator(Scenario.from_yaml(demo, overrides=base), write=False).run().recall_table(1)
    finetune = Simulator(Scenario.from_yaml(demo, overrides=base + ["method=finetune"]), write=False).run().recall_table(1)
    assert cvs.loc[0, "new"] > 0.6  # training works
    assert cvs.loc[2, "old"] > finetune.loc[2, "old"] + 0.2


@pytest.mark.realdata
def test_omniglot_runs_end_to_end(data_root, tmp_path):
    scenario = tiny_scenario(
        dataset={"name": "omniglot", "root": "omniglot", "image_size": 16},
        stream={"setup": "disjoint", "sessions": 2, "initial_classes": 6, "classes_per_session": 6},
    )
    result = Simulator(scenario, out_dir=tmp_path, data_root=data_root).run()
    stream = result.stream
    assert set(stream[stream.role == "query"].groupby("class_id").size()) == {5}  # 20 drawings, a quarter held out
    assert len(result.gallery) == 12 * 15
    assert result.recall_table(1).loc[1, "all"] > 1 / 12  # better than chance
