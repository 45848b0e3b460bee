"""How much the metrics add over the raw Faiss search they need.

Usage: python benchmarks/evaluation.py [--queries 10000] [--gallery 100000] [--classes 1000] [--dim 128]

Times (a) the raw search of a flat inner-product index for the k the metrics need
(max of R@K's K and the largest class's R, for mAP@R), (b) every metric computed from
that search's ids (class lookups, R@1/2/4/10, mAP@R, old/new/all aggregation), and
(c) both end to end through the gallery. Prints (a + b) / a; on a busy machine the
end-to-end figure is noisier, because a search's time varies more than the metrics add.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from cvstream.evaluation.evaluator import score_neighbors, score_queries, subset_means
from cvstream.gallery import Gallery


def clustered(rng: np.random.Generator, centers: np.ndarray, classes: np.ndarray, noise: float) -> np.ndarray:
    x = centers[classes] + noise * rng.standard_normal((len(classes), centers.shape[1]), dtype=np.float32)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for each timing")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((args.classes, args.dim), dtype=np.float32)
    gallery_classes = rng.integers(0, args.classes, args.gallery)
    query_classes = rng.integers(0, args.classes, args.queries)
    gallery_vectors = clustered(rng, centers, gallery_classes, noise=1.5)
    queries = clustered(rng, centers, query_classes, noise=1.5)
    recall_at = [1, 2, 4, 10]

    gallery = Gallery(args.dim)
    gallery.add(gallery_vectors, sample_ids=np.arange(args.gallery), class_ids=gallery_classes, session=0, generation=0)
    raw = faiss.IndexFlatIP(args.dim)
    raw.add(gallery_vectors)
    k = max(max(recall_at), int(np.bincount(gallery_classes).max()))
    subsets = {"old": query_classes < args.classes // 2, "new": query_classes >= args.classes // 2, "all": np.ones(args.queries, bool)}

    def best(fn) -> float:
        times = []
        for _ in range(args.repeats):
            clock = time.perf_counter()
            fn()
            times.append(time.perf_counter() - clock)
        return min(times)

    search = best(lambda: raw.search(queries, k))
    _, item_ids = gallery.search(queries, k)
    metrics = best(lambda: subset_means(score_neighbors(item_ids, query_classes, gallery, recall_at=recall_at, map_at_r=True), subsets))
    end_to_end = best(lambda: subset_means(score_queries(queries, query_classes, gallery, recall_at=recall_at, map_at_r=True), subsets))
    print(f"{args.queries:,} queries x {args.gallery:,} gallery items, dim {args.dim}, {args.classes} classes, k = {k}, "
          f"faiss threads {faiss.omp_get_max_threads()}, best of {args.repeats}")
    print(f"raw Faiss search:                     {search:8.3f} s")
    print(f"every metric, from the search's ids:  {metrics:8.3f} s")
    print(f"search + every metric, end to end:    {end_to_end:8.3f} s")
    print(f"ratio (search + metrics) / search: {(search + metrics) / search:.3f} "
          f"(metrics add {100 * metrics / search:.1f}%; end to end / raw search: {end_to_end / search:.3f})")


if __name__ == "__main__":
    main()
