"""Time to add one session's items (10,000 x 128-d) into a gallery of 10^4 and of 10^6 items.

A session's update must cost what its new items cost, not what the gallery holds: the
ratio (10^6 / 10^4) must stay under 1.3 for flat and ivf, and under 2.5 for hnsw, whose
insertion grows with log N. The gallery keeps its items in index segments of
`gallery.segment_size` items, so an add only ever touches the newest segment; the
segments' price is paid at search time, which this script also prints (time and how often
the top 1 is the exact one), for comparison with `--segment-size 2000000` (one segment). Run: `python benchmarks/gallery.py [--large 1000000] [--repeats 7] [--segment-size N]`.
Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import time

import faiss
import numpy as np

from cvstream.gallery import Gallery
from cvstream.scenario import GallerySpec

DIM = 128
SESSION = 10_000
TARGETS = {"flat": 1.3, "ivf": 1.3, "hnsw": 2.5}
SPECS = {
    "flat": GallerySpec(index="flat"),
    "ivf": GallerySpec(index="ivf", nlist=256, nprobe=8, train_size=10_000),
    "hnsw": GallerySpec(index="hnsw", hnsw_m=16, ef_construction=40),
}


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def filled(kind: str, size: int, rng: np.random.Generator) -> Gallery:
    gallery = Gallery(DIM, SPECS[kind])
    for start in range(0, size, 100_000):
        n = min(100_000, size - start)
        gallery.add(unit(rng, n), sample_ids=np.arange(start, start + n), class_ids=rng.integers(0, 1000, n), session=0, generation=0)
    return gallery


def add_seconds(kind: str, sizes: tuple[int, int], *, repeats: int, seed: int = 0) -> tuple[list[float], list[Gallery]]:
    """Median over `repeats` sessions of the seconds to add 10,000 new vectors to a gallery of each size; and the galleries.

    Both galleries live in this process and their adds alternate, so that both meet the same
    machine load and allocator state (this VM's speed drifts by tens of percent within minutes).
    """
    rng = np.random.default_rng(seed)
    galleries = [filled(kind, size, rng) for size in sizes]
    times: list[list[float]] = [[], []]
    for session in range(1, repeats + 1):
        for which in (0, 1) if session % 2 else (1, 0):
            batch = unit(rng, SESSION)
            classes = rng.integers(0, 1000, SESSION)
            clock = time.perf_counter()
            galleries[which].add(batch, sample_ids=np.arange(SESSION), class_ids=classes, session=session, generation=session)
            times[which].append(time.perf_counter() - clock)
    return [float(np.median(t)) for t in times], galleries


def search_figures(gallery: Gallery, rng: np.random.Generator, queries: int = 1000) -> tuple[float, float]:
    """What segments cost a search: ms for `queries` near-duplicate queries (k = 10), and the share whose top 1 is the exact one."""
    stored = gallery.vectors(rng.choice(len(gallery), queries, replace=False))
    q = stored + 0.3 * unit(rng, queries)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    clock = time.perf_counter()
    _, ids = gallery.search(q, 10)
    seconds = time.perf_counter() - clock
    _, exact = faiss.knn(q, gallery.vectors(np.arange(len(gallery))), 1, metric=faiss.METRIC_INNER_PRODUCT)
    return seconds * 1e3, float((ids[:, 0] == exact[:, 0]).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="Faiss threads (1: timings undisturbed by other work)")
    parser.add_argument("--kinds", default="flat,ivf,hnsw")
    parser.add_argument("--segment-size", type=int, default=0, help="items per index segment (0: the scenario default)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    ok = True
    for kind in args.kinds.split(","):
        if args.segment_size:
            SPECS[kind] = SPECS[kind].model_copy(update={"segment_size": args.segment_size})
    size = SPECS["flat"].segment_size if not args.segment_size else args.segment_size
    print(f"add {SESSION:,} x {DIM}-d vectors; median of {args.repeats} sessions; faiss threads {args.threads}; segment_size {size:,}")
    print(f"{'index':<6} {'N=' + format(args.small, ','):>14} {'N=' + format(args.large, ','):>16} {'segments':>9} {'ratio':>7} {'target':>7}")
    searches = {}
    for kind in args.kinds.split(","):
        (small, large), (_, gallery) = add_seconds(kind, (args.small, args.large), repeats=args.repeats)
        searches[kind] = search_figures(gallery, np.random.default_rng(1))
        ratio = large / small
        passed = ratio < TARGETS[kind]
        ok &= passed
        print(f"{kind:<6} {small * 1e3:>12.1f} ms {large * 1e3:>14.1f} ms {len(gallery.segments):>9} {ratio:>7.2f} {'<' + str(TARGETS[kind]):>7} "
              f"{'ok' if passed else 'MISSED'}", flush=True)
        del gallery
    print(f"\nsearch at N={args.large + args.repeats * SESSION:,}: 1,000 near-duplicate queries, k = 10")
    for kind, (ms, agree) in searches.items():
        print(f"{kind:<6} {ms:>8.1f} ms   top 1 = exact top 1 for {agree:.3f} of queries")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
