"""Every metric of a small run, recomputed from its saved embeddings by an independent implementation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cvstream.simulator import Simulator, load_run
from conftest import tiny_scenario


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation") / "run"
    scenario = tiny_scenario(
        evaluation={"probe_items": 30, "every_steps": 2}, output={"save_embeddings": True}
    )
    Simulator(scenario, out_dir=out).run()
    return out


TIE = 1e-6  # scores closer than this may be ordered either way by float32 arithmetic (Faiss's or ours)


def _rankings(query_vectors, gallery_vectors, gallery_classes, query_classes):
    """Per query, the gallery classes ranked twice: near-ties broken for the query (best case) and against it."""
    scores = query_vectors.astype(np.float64) @ gallery_vectors.astype(np.float64).T
    best, worst = [], []
    for s, c in zip(scores, query_classes):
        order = np.argsort(-s, kind="stable")
        group = np.concatenate([[0], np.cumsum(np.diff(s[order]) < -TIE)])
        relevant = (gallery_classes[order] == c).astype(int)
        best.append(gallery_classes[order[np.lexsort((-relevant, group))]])
        worst.append(gallery_classes[order[np.lexsort((relevant, group))]])
    return np.array(best), np.array(worst)


def _per_query(ranked, query_classes, gallery_classes, ks):
    out: dict[str, list[float]] = {f"recall@{k}": [] for k in ks}
    out["map@r"] = []
    for row, c in zip(ranked, query_classes):
        for k in ks:
            out[f"recall@{k}"].append(float(c in row[:k]))
        r = int((gallery_classes == c).sum())
        precisions = [np.mean(row[: i + 1] == c) for i in range(r) if row[i] == c]
        out["map@r"].append(sum(precisions) / r)
    return {k: np.asarray(v) for k, v in out.items()}


def _recompute_session(npz, home: dict[int, int], session: int, ks) -> dict:
    """(subset, metric) -> (low, high): equal unless near-ties make the ranking ambiguous."""
    classes, gallery_classes = npz["query_class_ids"], npz["gallery_class_ids"]
    best, worst = _rankings(npz["query_vectors"], npz["gallery_vectors"], gallery_classes, classes)
    high, low = _per_query(best, classes, gallery_classes, ks), _per_query(worst, classes, gallery_classes, ks)
    homes = np.array([home[int(c)] for c in classes])
    subsets = {"old": homes < session, "new": homes == session, "all": np.ones(len(classes), bool)}
    subsets.update({f"home:{g}": homes == g for g in set(homes.tolist())})
    out = {}
    for subset, mask in subsets.items():
        if mask.any():
            for metric in high:
                out[(subset, metric)] = (float(low[metric][mask].mean()), float(high[metric][mask].mean()))
    out["_correct"] = dict(zip(npz["query_sample_ids"].tolist(), zip(low["recall@1"], high["recall@1"])))
    return out


def _close(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] - 1e-6 <= value <= bounds[1] + 1e-6


def test_every_metric_recomputed_from_saved_embeddings(saved_run):
    metrics = pd.read_parquet(saved_run / "metrics.parquet")
    stream = pd.read_parquet(saved_run / "stream.parquet")
    home = stream[stream.role == "train"].groupby("class_id")["session"].min().to_dict()
    ks = [1, 2, 4, 10]
    sessions = sorted(metrics.session.unique())
    assert sessions == [0, 1, 2]

    def value(session, view, subset, metric):
        hit = metrics[(metrics.session == session) & (metrics.gallery_view == view) & (metrics.subset == subset) & (metrics.metric == metric)]
        assert len(hit) == 1, (session, view, subset, metric)
        return float(hit.value.iloc[0])

    checked, exact = 0, 0

    def check(got, bounds):
        nonlocal checked, exact
        assert _close(got, bounds), (got, bounds)
        checked += 1
        exact += bounds[1] - bounds[0] < 1e-12

    history = []
    for t in sessions:
        with np.load(saved_run / "embeddings" / f"session-{t}.npz") as npz:
            assert set(npz.files) == {"query_vectors", "query_sample_ids", "query_class_ids", "gallery_vectors", "gallery_item_ids", "gallery_class_ids"}
            mine = _recompute_session(npz, home, t, ks)
        for key, bounds in mine.items():
            if key == "_correct" or (key[0].startswith("home:") and key[1] != "recall@1"):
                continue
            check(value(t, "mixed", *key), bounds)
        for k in ks:  # AR@K: the mean over sessions so far of R@K on all seen queries
            seen = [h[("all", f"recall@{k}")] for h in history] + [mine[("all", f"recall@{k}")]]
            check(value(t, "mixed", "all", f"ar@{k}"), (np.mean([b[0] for b in seen]), np.mean([b[1] for b in seen])))
        old_forgetting = []
        for g in sorted(int(s[5:]) for s, m in [k for k in mine if k != "_correct"] if s.startswith("home:") and m == "recall@1"):
            earlier = [h[(f"home:{g}", "recall@1")] for h in history if (f"home:{g}", "recall@1") in h]
            if g < t and earlier:
                now = mine[(f"home:{g}", "recall@1")]
                bounds = (max(e[0] for e in earlier) - now[1], max(e[1] for e in earlier) - now[0])
                check(value(t, "mixed", f"home:{g}", "forgetting"), bounds)
                old_forgetting.append(bounds)
        if old_forgetting:
            check(value(t, "mixed", "old", "forgetting"), tuple(np.mean(old_forgetting, axis=0)))
        if history:
            before, now = history[-1]["_correct"], mine["_correct"]
            common = [q for q in now if q in before]
            low = np.mean([before[q][0] == 1 and now[q][1] == 0 for q in common])
            high = np.mean([before[q][1] == 1 and now[q][0] == 0 for q in common])
            check(value(t, "mixed", "all", "negative_flip"), (low, high))
        history.append(mine)
    # The tiny model's embeddings are close together (cosines ~0.999), so some rankings hold near-ties;
    # most values must still be pinned down exactly.
    assert checked > 60 and exact >= 0.6 * checked, (checked, exact)

    # The compatibility matrix, the BCT criterion and AC / BC / FC, from the saved probe embeddings.
    probes = {}
    for g in sessions:
        with np.load(saved_run / "embeddings" / f"probe-{g}.npz") as npz:
            probes[g] = {k: npz[k] for k in npz.files}
    C = np.full((3, 3), np.nan)
    for i in sessions:
        for j in range(i + 1):
            classes = probes[i]["probe_query_class_ids"]
            best, worst = _rankings(probes[i]["probe_query_vectors"], probes[j]["probe_gallery_vectors"], probes[j]["probe_gallery_class_ids"], classes)
            bounds = (np.mean(worst[:, 0] == classes), np.mean(best[:, 0] == classes))
            C[i, j] = value(i, f"gen:{j}", "all", "recall@1")
            check(C[i, j], bounds)
        if i >= 1:  # the scores derived from C, from the matrix as written
            assert value(i, f"gen:{i - 1}", "all", "bct_criterion") == float(C[i, i - 1] > C[i - 1, i - 1])
            pairs = [(a, b) for a in range(i + 1) for b in range(a)]
            assert value(i, "probe", "all", "ac") == pytest.approx(np.mean([C[a, b] >= C[b, b] for a, b in pairs]), abs=1e-6)
            assert value(i, "probe", "all", "bc") == pytest.approx(np.mean([C[i, b] - C[b, b] for b in range(i)]), abs=1e-6)
            assert value(i, "probe", "all", "fc") == pytest.approx(np.mean([C[a, a - 1] - C[a, a] for a in range(1, i + 1)]), abs=1e-6)
    assert len(probes[0]["probe_gallery_sample_ids"]) == 30
    np.testing.assert_array_equal(probes[0]["probe_gallery_sample_ids"], probes[2]["probe_gallery_sample_ids"])


def test_saved_gallery_is_what_the_session_searched(saved_run):
    gallery = load_run(saved_run).gallery
    with np.load(saved_run / "embeddings" / "session-2.npz") as npz:
        assert len(npz["gallery_item_ids"]) == len(gallery)
        np.testing.assert_array_equal(npz["gallery_class_ids"], gallery.class_id.to_numpy())
    with np.load(saved_run / "embeddings" / "session-0.npz") as npz:
        assert len(npz["gallery_item_ids"]) == int((gallery.session_added == 0).sum())


def test_probe_and_anytime_costs_are_billed_to_evaluation(saved_run):
    costs = pd.read_parquet(saved_run / "costs.parquet")
    metrics = pd.read_parquet(saved_run / "metrics.parquet")
    stream = pd.read_parquet(saved_run / "stream.parquet")
    events = pd.read_parquet(saved_run / "events.parquet")
    steps = events[events.kind == "train"].detail.map(lambda d: __import__("json").loads(d)["steps"]).tolist()
    queries = stream[stream.role == "query"].groupby("session").size().cumsum()
    gallery_items = stream[stream.role == "gallery"].groupby("session").size()
    for t in (0, 1, 2):
        evaluate = costs[(costs.session == t) & (costs.phase == "evaluate")].backbone_forwards.item()
        anytime_points = steps[t] // 2
        # queries once, probe gallery + probe queries (30 + 30), and per anytime point the queries and the session's items
        assert evaluate == queries[t] + 60 + anytime_points * (queries[t] + gallery_items[t])
    anytime = metrics[metrics.gallery_view.str.startswith("anytime:") & (metrics.subset == "all")]
    assert len(anytime) == sum(s // 2 for s in steps) > 0
    last = metrics[(metrics.metric == "a_auc") & (metrics.session == 2)].value.item()
    assert last == pytest.approx(anytime.value.mean(), abs=1e-9)


def test_recall_at_without_one_still_measures_forgetting_and_flips():
    result = Simulator(tiny_scenario(evaluation={"recall_at": [5], "probe_items": 0, "map_at_r": False}), write=False).run()
    metrics = result.metrics
    assert {"recall@5", "recall@1", "forgetting", "negative_flip", "ar@5"} <= set(metrics.metric)
    assert not metrics.gallery_view.str.startswith("gen:").any()  # probe_items: 0 turns the matrix off


# -- evaluation in blocks of queries -----------------------------------------------------------


def _uneven_gallery(index: str):
    """A gallery whose classes are very uneven (one of 2,000 items, many of 2 to 40) and queries of every class."""
    from cvstream.gallery import Gallery
    from cvstream.scenario import GallerySpec

    rng = np.random.default_rng(11)
    dim, classes = 16, 60
    sizes = np.r_[2000, rng.integers(2, 40, classes - 1)]
    gallery_classes = np.repeat(np.arange(classes), sizes)
    centres = rng.normal(size=(classes, dim))

    def embed(labels):
        x = centres[labels] + 1.2 * rng.normal(size=(len(labels), dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    gallery = Gallery(dim, GallerySpec(index=index, nlist=8, nprobe=8, segment_size=1500, gpu=False), seed=0)
    gallery.add(embed(gallery_classes), sample_ids=np.arange(len(gallery_classes)), class_ids=gallery_classes, session=0, generation=0)
    query_classes = np.r_[np.zeros(40, np.int64), rng.integers(1, classes, 400)]
    return gallery, embed(query_classes), query_classes


class _CountingSearches:
    """Wraps a gallery's search and records rows x k of every call."""

    def __init__(self, gallery):
        self.sizes: list[tuple[int, int]] = []
        search = gallery.search

        def counted(queries, k):
            self.sizes.append((len(queries), k))
            return search(queries, k)

        gallery.search = counted


@pytest.mark.parametrize("index", ["flat", "ivf", "hnsw"])
def test_batched_evaluation_equals_one_search_for_all_and_bounds_the_neighbours(index):
    from cvstream.evaluation.evaluator import neighbors_per_query, score_neighbors, score_queries

    gallery, queries, query_classes = _uneven_gallery(index)
    kwargs = dict(recall_at=[1, 2, 4, 10], map_at_r=True)
    k = int(neighbors_per_query(query_classes, gallery, **kwargs).max())  # the one search of the unbatched evaluation
    assert k == 2000
    _, item_ids = gallery.search(queries, k)
    unbatched = score_neighbors(item_ids, query_classes, gallery, **kwargs)

    counter = _CountingSearches(gallery)
    batched = score_queries(queries, query_classes, gallery, **kwargs, neighbor_budget=4000)
    assert list(batched) == list(unbatched)
    for name in unbatched:
        np.testing.assert_array_equal(batched[name], unbatched[name], err_msg=name)
    assert sum(rows for rows, _ in counter.sizes) == len(queries)
    if index == "hnsw":  # its answers depend on k: every block asks for the largest need, in blocks of 2 rows
        assert {k_ for _, k_ in counter.sizes} == {2000} and max(r * k_ for r, k_ in counter.sizes) <= 4000
    else:  # the 40 queries of the 2,000-item class one at a time, the others in blocks of their own largest R
        assert max(r * k_ for r, k_ in counter.sizes if r > 1) <= 4000
        assert all(r == 1 for r, k_ in counter.sizes if k_ > 4000 // 2)
        assert sum(r * k_ for r, k_ in counter.sizes) < 0.15 * len(queries) * k


def test_query_blocks_cover_every_query_once_within_the_budget():
    from cvstream.evaluation.evaluator import query_blocks

    needed = np.random.default_rng(3).choice([1, 10, 500, 7000], size=5000, p=[0.5, 0.3, 0.19, 0.01])
    blocks = query_blocks(needed, 10_000)
    assert np.array_equal(np.sort(np.concatenate(blocks)), np.arange(len(needed)))
    for rows in blocks:
        assert len(rows) == 1 or len(rows) * needed[rows].max() <= 10_000
    assert query_blocks(np.zeros(0, np.int64), 10) == []


# -- calibration of a mixed gallery ------------------------------------------------------------


@pytest.mark.parametrize(("narrow_queries", "old_positive"), [("pad", [0.5, 0.6]), ("normalize", [1.0, 1.0])])
def test_calibration_scores_pairs_as_the_mixed_search_does(narrow_queries, old_positive):
    """Generation 0's 2-d items of classes 0 and 1, generation 1's 4-d items of classes 1 and 2, two generation-1 queries
    (classes 0 and 1): old positives through the gallery's narrow_queries, the best other-class generation-1 item."""
    from cvstream.evaluation.evaluator import calibration_per_query
    from cvstream.gallery import Gallery
    from cvstream.scenario import GallerySpec

    gallery = Gallery(2, GallerySpec(gpu=False, narrow_queries=narrow_queries))
    gallery.add(np.eye(2, dtype=np.float32), sample_ids=np.arange(2), class_ids=np.array([0, 1]), session=0, generation=0)
    single = calibration_per_query(np.eye(2, dtype=np.float32), np.array([0, 1]), gallery, generation=0)
    assert single == {}  # one generation: nothing to calibrate
    gallery.widen(4)
    newer = np.array([[0.6, 0.0, 0.8, 0.0], [0.0, 0.0, 0.0, 1.0]], np.float32)
    gallery.add(newer, sample_ids=np.arange(2, 4), class_ids=np.array([1, 2]), session=1, generation=1)
    queries = np.array([[0.5, 0.0, 0.75**0.5, 0.0], [0.0, 0.6, 0.8, 0.0]], np.float32)
    values = calibration_per_query(queries, np.array([0, 1]), gallery, generation=1)
    np.testing.assert_allclose(values["calibration_old_positive"], old_positive, atol=1e-6)
    # Query 0's best negative is the class-1 item (0.993); query 1 passes over its own class's item (0.64) for class 2's (0).
    np.testing.assert_allclose(values["calibration_new_negative_top"], [0.3 + 0.8 * 0.75**0.5, 0.0], atol=1e-6)
