"""Nearest classes over stored gallery items plus items not stored yet."""

from __future__ import annotations

import numpy as np

from cvstream.evaluation.retrieval import top_classes
from cvstream.gallery import Gallery
from cvstream.scenario import GallerySpec


def test_top_classes_merges_stored_and_fresh_items_by_score():
    """Stored gallery items and items not stored yet, merged by inner product; a tie goes to the stored one;
    -1 fills where there are fewer items than asked."""
    e = np.eye(3, dtype=np.float32)
    gallery = Gallery(3, GallerySpec(gpu=False))
    gallery.add(e[[0, 1]], sample_ids=np.arange(2), class_ids=np.array([10, 11]), session=0, generation=0)
    fresh = np.stack([e[0], e[2]])  # the first ties the stored item of class 10
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    queries = np.stack([e[0], unit(e[2] + 0.1 * e[0]), unit(e[1] + 0.5 * e[2])]).astype(np.float32)
    found = top_classes(queries, 2, gallery=gallery, vectors=fresh, classes=np.array([20, 22]))
    assert found.tolist() == [[10, 20], [22, 10], [11, 22]]
    assert top_classes(queries[:1], 4, vectors=fresh, classes=np.array([20, 22])).tolist() == [[20, 22, -1, -1]]
    assert top_classes(queries[:1], 1).tolist() == [[-1]]
