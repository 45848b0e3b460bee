"""How much the metrics add over the raw Faiss search they need.

Usage: python benchmarks/evaluation.py [--queries 10000] [--gallery 100000] [--classes 1000] [--dim 128]

Times (a) the raw search of a flat inner-product index for the k the metrics need
(max of R@K's K and the largest class's R, for mAP@R), and (b) the whole evaluation of
one session (`score_queries` + `aggregate`: the same search through the gallery, class
lookups, R@1/2/4/10, mAP@R, and old/new/all aggregation). Prints the ratio b / a.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from cvstream.gallery import Gallery
from cvstream.simulator.evaluate import aggregate, score_queries


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
    evaluate = best(lambda: aggregate(score_queries(queries, query_classes, gallery, recall_at=recall_at, map_at_r=True), subsets))
    print(f"{args.queries:,} queries x {args.gallery:,} gallery items, dim {args.dim}, {args.classes} classes, k = {k}, "
          f"faiss threads {faiss.omp_get_max_threads()}")
    print(f"raw Faiss search:        {search:8.3f} s")
    print(f"search + every metric:   {evaluate:8.3f} s")
    print(f"ratio: {evaluate / search:.3f} (metrics add {100 * (evaluate / search - 1):+.1f}% over the raw search)")


if __name__ == "__main__":
    main()
