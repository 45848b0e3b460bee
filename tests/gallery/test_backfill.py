"""Backfill policies on hand-made galleries: the budget, the order, and the transform psi."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvstream.gallery import Gallery
from cvstream.gallery.backfill import budget_items, fit_transform, order_items, plan_backfill, stale_items, transform_pairs
from cvstream.scenario import BackfillSpec


def hand_made() -> Gallery:
    """Six items of two classes in 2-d; generations 1, 0, 2, 0, 1, 2 (item ids 0..5)."""
    gallery = Gallery(2)
    vectors = np.array([[1, 0], [0.6, 0.8], [1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    classes = np.array([0, 0, 0, 1, 1, 1])
    generations = [1, 0, 2, 0, 1, 2]
    for item, (v, c, g) in enumerate(zip(vectors, classes, generations)):
        gallery.add(v[None], sample_ids=np.array([100 + item]), class_ids=np.array([c]), session=g, generation=g)
    return gallery


def test_stale_items_are_those_not_embedded_by_the_current_generation():
    assert list(stale_items(hand_made(), 2)) == [0, 1, 3, 4]
    assert list(stale_items(hand_made(), 0)) == []


def test_budget_as_fraction_or_count():
    assert budget_items(0.25, gallery_size=10) == 2
    assert budget_items(1.0, gallery_size=10) == 10
    assert budget_items(0.3, gallery_size=10) == 3  # no float rounding down to 2
    assert budget_items(7, gallery_size=3) == 7
    assert budget_items(None, gallery_size=10) == 0


def test_order_oldest_puts_the_oldest_generation_first_then_the_smaller_id():
    gallery = hand_made()
    ordered = order_items("oldest", stale_items(gallery, 2), gallery=gallery, rng=np.random.default_rng(0))
    assert list(ordered) == [1, 3, 0, 4]


def test_order_far_from_mean_uses_the_stored_vectors():
    gallery = hand_made()
    # class 0 mean (0.867, 0.267): item 1 (0.6, 0.8) is 0.596 away, item 0 (1, 0) 0.298;
    # class 1 mean (0.333, 0.667): item 3 (1, 0) is 0.943 away, item 4 (0, 1) 0.471.
    ordered = order_items("far-from-mean", stale_items(gallery, 2), gallery=gallery, rng=np.random.default_rng(0))
    assert list(ordered) == [3, 1, 4, 0]


def test_order_random_is_a_permutation_of_the_stale_items_fixed_by_the_seed():
    gallery = Gallery(2)
    generations = np.arange(60) % 3  # 40 of the 60 items are stale for generation 2
    for item, g in enumerate(generations):
        gallery.add(np.array([[1.0, 0.0]], np.float32), sample_ids=np.array([item]), class_ids=np.array([item % 2]), session=g, generation=g)
    stale = stale_items(gallery, 2)

    def ordered(seed: int) -> list[int]:
        return order_items("random", stale, gallery=gallery, rng=np.random.default_rng(seed)).tolist()

    assert len(stale) == 40 and sorted(ordered(5)) == stale.tolist()  # every stale item once, no fresh one
    assert ordered(5) == ordered(5)  # the seed decides the order
    assert ordered(5) != ordered(6) and ordered(5) != stale.tolist()  # ... and it is not the id order


def test_order_uncertainty_puts_the_least_certain_mapping_first():
    gallery = hand_made()
    ordered = order_items("uncertainty", stale_items(gallery, 2), gallery=gallery, rng=np.random.default_rng(0),
                          uncertainty={0: 0.1, 1: 0.5, 3: 0.9, 4: 0.2})
    assert list(ordered) == [3, 1, 4, 0]


@pytest.mark.parametrize(("order", "budget", "expected"), [
    ("oldest", 2, [1, 3]), ("far-from-mean", 3, [3, 1, 4]), ("oldest", 0.5, [1, 3, 0]), ("far-from-mean", 100, [3, 1, 4, 0]),
])
def test_partial_re_embeds_exactly_the_budget_in_order(order, budget, expected):
    gallery = hand_made()
    spec = BackfillSpec(policy="partial", budget=budget, order=order)
    assert list(plan_backfill(spec, gallery=gallery, generation=2, rng=np.random.default_rng(0))) == expected


def test_none_and_full():
    gallery = hand_made()
    assert len(plan_backfill(BackfillSpec(policy="none"), gallery=gallery, generation=2, rng=np.random.default_rng(0))) == 0
    assert list(plan_backfill(BackfillSpec(policy="full"), gallery=gallery, generation=2, rng=np.random.default_rng(0))) == [0, 1, 3, 4]


def test_transform_pairs_prefer_the_replay_buffer():
    pairs = transform_pairs(np.arange(10), preferred=np.array([7, 8, 2]), count=4, rng=np.random.default_rng(0))
    assert len(pairs) == 4 and {2, 7, 8} <= set(pairs)


def test_transform_reduces_the_error_on_held_out_items():
    rng = np.random.default_rng(0)
    dim = 16
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    old = rng.standard_normal((600, dim))
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    new = np.tanh(2 * old @ rotation) + 0.02 * rng.standard_normal((600, dim))  # a new generation: rotated, bent, noisy
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    old, new = old.astype(np.float32), new.astype(np.float32)
    fitted = fit_transform(old[:500], new[:500], hidden=64, epochs=60, lr=3e-3, generator=torch.Generator().manual_seed(0))
    mapped, variance = fitted.apply(old[500:])
    identity_error = ((old[500:] - new[500:]) ** 2).sum(1).mean()
    psi_error = ((mapped - new[500:]) ** 2).sum(1)
    assert psi_error.mean() < 0.25 * identity_error
    np.testing.assert_allclose(np.linalg.norm(mapped, axis=1), 1, atol=1e-5)
    assert fitted.forwards == 60 * 500
    # The predicted variance ranks the held-out errors better than chance.
    assert np.corrcoef(variance, psi_error)[0, 1] > 0
