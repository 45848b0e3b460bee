"""Replay selections: herding, random, class-balanced, reservoir; the budget is never exceeded."""

from __future__ import annotations

import numpy as np
import pytest

from cvstream.gallery.replay import ReplayBuffer, balanced_quotas, herding


def _arrivals(classes, per_class, start=0):
    rng = np.random.default_rng(0)
    out, next_id = {}, start
    for c in classes:
        ids = np.arange(next_id, next_id + per_class)
        next_id += per_class
        out[c] = (ids, rng.normal(size=(per_class, 4)).astype(np.float32))
    return out


def test_herding_picks_whatever_keeps_the_running_mean_nearest_the_class_mean():
    vectors = np.array([[0.0, 0.0], [1.0, 1.0], [0.4, 0.6], [2.0, 2.0]])
    # Mean (0.85, 0.9): (1, 1) is nearest; then (1 + x) / 2 is nearest for x = (0.4, 0.6).
    assert herding(vectors, 2).tolist() == [1, 2]


def test_balanced_quotas_use_the_whole_budget():
    assert balanced_quotas({1: 10, 2: 10, 3: 10}, 10) == {1: 4, 2: 3, 3: 3}
    assert balanced_quotas({1: 2, 2: 10, 3: 10}, 12) == {1: 2, 2: 5, 3: 5}  # a small class frees its share
    assert balanced_quotas({1: 2, 2: 3}, 12) == {1: 2, 2: 3}


@pytest.mark.parametrize("selection", ["herding", "random", "class-balanced", "reservoir"])
def test_budget_holds_over_sessions(selection):
    buffer = ReplayBuffer(10, selection)
    rng = np.random.default_rng(1)
    seen = set()
    for t in range(4):
        arrivals = _arrivals([2 * t, 2 * t + 1], 8, start=100 * t)
        seen |= set(arrivals)
        buffer.update(arrivals, classes_seen=len(seen), rng=rng)
        assert len(buffer) <= 10
        assert len(set(buffer.sample_ids().tolist())) == len(buffer)
    counts = buffer.per_class()
    if selection in ("herding", "random"):
        assert set(counts.values()) == {1}  # 10 // 8 classes
    if selection == "class-balanced":
        assert len(buffer) == 10 and max(counts.values()) - min(counts.values()) <= 1


def test_reservoir_keeps_a_uniform_sample_of_all_arrivals():
    # 2 sessions of 100 arrivals, buffer 50: each arrival survives with probability 1/4, whatever its session.
    first_session = []
    for seed in range(200):
        buffer = ReplayBuffer(50, "reservoir")
        rng = np.random.default_rng(seed)
        buffer.update(_arrivals([0], 100), classes_seen=1, rng=rng)
        buffer.update(_arrivals([1], 100, start=100), classes_seen=2, rng=rng)
        assert len(buffer) == 50
        first_session.append(buffer.per_class().get(0, 0))
    assert np.mean(first_session) == pytest.approx(25, abs=1.5)


@pytest.mark.parametrize("selection", ["herding", "random"])
def test_more_classes_than_slots_keep_one_exemplar_each_for_as_many_as_fit_newest_first(selection):
    # size // classes_seen is 0 from session 2 on: the buffer used to empty itself there, every few sessions
    buffer = ReplayBuffer(5, selection)
    rng = np.random.default_rng(2)
    seen = set()
    for t in range(5):
        arrivals = _arrivals([3 * t, 3 * t + 1, 3 * t + 2], 4, start=100 * t)
        seen |= set(arrivals)
        buffer.update(arrivals, classes_seen=len(seen), rng=rng)
        expected = min(5, len(seen)) if len(seen) > 5 else 5 // len(seen) * len(seen)
        assert len(buffer) == expected
        if len(seen) > 5:
            assert set(arrivals) <= set(buffer.per_class()) and set(buffer.per_class().values()) == {1}
