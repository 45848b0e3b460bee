"""Metrics on hand-computed cases, and against a brute-force NumPy reference on random data."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from cvstream.evaluation import metrics as M


def test_recall_at_k_hand_case():
    neighbors = np.array([[1, 2, 3], [2, 2, 1], [3, 3, 3]])
    queries = np.array([1, 1, 1])
    assert M.recall_at_k(neighbors, queries, 1).tolist() == [1, 0, 0]
    assert M.recall_at_k(neighbors, queries, 2).tolist() == [1, 0, 0]
    assert M.recall_at_k(neighbors, queries, 3).tolist() == [1, 1, 0]


def test_map_at_r_hand_case():
    # R = 3 relevant items; hits at ranks 1 and 3 within the top 3: (1/1 + 2/3) / 3.
    neighbors = np.array([[7, 5, 7, 7, 5]])
    ap = M.average_precision_at_r(neighbors, np.array([7]), np.array([3]))
    assert ap[0] == pytest.approx((1 + 2 / 3) / 3)
    # A hit beyond rank R does not count; a class absent from the gallery gives NaN.
    ap = M.average_precision_at_r(np.array([[5, 7, 7], [1, 1, 1]]), np.array([7, 9]), np.array([1, 0]))
    assert ap[0] == 0.0 and np.isnan(ap[1])


def test_negative_flips_forgetting_and_means():
    assert M.negative_flips(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])).tolist() == [0, 1, 0, 0]
    assert M.forgetting([0.5, 0.8, 0.6], 0.3) == pytest.approx(0.5)
    assert M.forgetting([0.2], 0.4) == pytest.approx(-0.2)  # a group can also improve
    assert np.isnan(M.forgetting([], 0.4))
    assert M.mean_over_sessions([0.9, 0.6, 0.3]) == pytest.approx(0.6)
    assert M.area_under_curve([0.2, 0.4]) == pytest.approx(0.3)


def test_calibration_hand_case():
    """Mean new-to-old positive score and top new-to-new negative score, per query; NaN in both where either is missing."""
    nan = np.nan
    positive = np.array([[0.9, 0.7], [0.5, nan], [nan, nan], [0.2, 0.4]])
    negative = np.array([[0.95, 0.8], [0.6, 0.3], [0.9, 0.1], [0.5, -np.inf]], np.float32)
    negative_classes = np.array([[0, 3], [2, 4], [5, 6], [1, -1]])  # query 0's best is its own class; query 3 has no other
    values = M.calibration(positive, negative, negative_classes, np.array([0, 1, 2, 1]))
    np.testing.assert_allclose(values["calibration_old_positive"], [0.8, 0.5, nan, nan], atol=1e-7)
    np.testing.assert_allclose(values["calibration_new_negative_top"], [0.8, 0.6, nan, nan], atol=1e-7)


def test_compatibility_scores_hand_case():
    nan = np.nan
    C = np.array([[0.50, nan, nan], [0.55, 0.60, nan], [0.40, 0.65, 0.70]])
    scores = M.compatibility_scores(C)
    # pairs (1,0): .55>=.50 yes; (2,0): .40>=.50 no; (2,1): .65>=.60 yes.
    assert scores["ac"] == pytest.approx(2 / 3)
    assert scores["bc"] == pytest.approx(((0.40 - 0.50) + (0.65 - 0.60)) / 2)
    assert scores["fc"] == pytest.approx(((0.55 - 0.60) + (0.65 - 0.70)) / 2)
    assert M.bct_criterion(C, 1, 0) == 1.0 and M.bct_criterion(C, 2, 0) == 0.0
    assert all(np.isnan(v) for v in M.compatibility_scores(C[:1, :1]).values())


def test_update_gain_hand_case():
    assert M.update_gain(new_old=0.6, old_old=0.5, paragon=0.7) == pytest.approx(0.5)
    assert np.isnan(M.update_gain(new_old=0.6, old_old=0.5, paragon=0.5))


def _brute_force(queries, query_classes, gallery, gallery_classes, ks):
    """An independent reference: full similarity matrix, a stable sort, explicit loops."""
    out = {f"recall@{k}": [] for k in ks}
    out["map@r"] = []
    sims = queries.astype(np.float64) @ gallery.astype(np.float64).T
    for q in range(len(queries)):
        order = sorted(range(len(gallery)), key=lambda i: -sims[q, i])
        ranked = [gallery_classes[i] for i in order]
        for k in ks:
            out[f"recall@{k}"].append(float(query_classes[q] in ranked[:k]))
        r = sum(1 for c in gallery_classes if c == query_classes[q])
        hits, total = 0, 0.0
        for i in range(r):
            if ranked[i] == query_classes[q]:
                hits += 1
                total += hits / (i + 1)
        out["map@r"].append(total / r if r else np.nan)
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_brute_force_on_random_data(seed):
    rng = np.random.default_rng(seed)
    dim, n_gallery, n_queries, n_classes = 8, 120, 40, 6
    gallery = rng.normal(size=(n_gallery, dim)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = rng.normal(size=(n_queries, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gallery_classes = rng.integers(0, n_classes, n_gallery)
    query_classes = rng.integers(0, n_classes + 1, n_queries)  # class n_classes has no gallery item
    ks = [1, 2, 4, 10]
    relevant = np.array([(gallery_classes == c).sum() for c in query_classes])
    index = faiss.IndexFlatIP(dim)
    index.add(gallery)
    _, ids = index.search(queries, max(max(ks), int(relevant.max())))
    neighbors = gallery_classes[ids]
    expected = _brute_force(queries, query_classes, gallery, gallery_classes, ks)
    for k in ks:
        np.testing.assert_array_equal(M.recall_at_k(neighbors, query_classes, k), expected[f"recall@{k}"])
    np.testing.assert_allclose(M.average_precision_at_r(neighbors, query_classes, relevant), expected["map@r"], atol=1e-12)


def test_recall_and_map_at_r_agree_with_pytorch_metric_learning():
    """The field's reference implementation (Musgrave et al.'s AccuracyCalculator) on a case with overlapping
    classes and unequal class sizes: R@1 is its precision_at_1, mAP@R its mean_average_precision_at_r."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    from cvstream.evaluation.evaluator import score_queries, subset_means
    from cvstream.gallery import Gallery
    from cvstream.scenario import GallerySpec

    rng = np.random.default_rng(7)
    dim, classes = 16, 9
    centres = rng.normal(size=(classes, dim))
    sizes = rng.integers(3, 40, classes)  # unequal R per class
    gallery_classes = np.repeat(np.arange(classes), sizes)
    def embed(labels):
        x = centres[labels] + 1.3 * rng.normal(size=(len(labels), dim))  # noisy: many queries miss, ranks interleave
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    gallery_vectors = embed(gallery_classes)
    query_classes = rng.integers(0, classes, 300)
    queries = embed(query_classes)

    gallery = Gallery(dim, GallerySpec(gpu=False))
    gallery.add(gallery_vectors, sample_ids=np.arange(len(gallery_classes)), class_ids=gallery_classes, session=0, generation=0)
    per_query = score_queries(queries, query_classes, gallery, recall_at=[1], map_at_r=True)
    ours = {metric: value for _, metric, value, _ in subset_means(per_query, {"all": np.ones(len(queries), dtype=bool)})}

    theirs = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count").get_accuracy(
        torch.from_numpy(queries), torch.from_numpy(query_classes), torch.from_numpy(gallery_vectors),
        torch.from_numpy(gallery_classes), ref_includes_query=False,
    )
    assert 0.2 < ours["recall@1"] < 0.9 and 0.05 < ours["map@r"] < 0.8  # non-trivial
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
