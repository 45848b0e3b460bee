"""Time to add one session's items (10,000 x 128-d) into a gallery of 10^4 and of 10^6 items.

A session's update must cost what its new items cost, not what the gallery holds: the
ratio (10^6 / 10^4) must stay under 1.3 for flat and ivf, and under 2.5 for hnsw, whose
insertion grows with log N. Run: `python benchmarks/gallery.py [--large 1000000] [--repeats 5] [--segment-size N]`.
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


def add_seconds(kind: str, size: int, *, repeats: int, seed: int = 0) -> tuple[float, int]:
    """Median over `repeats` sessions: seconds to add 10,000 new vectors to a gallery holding `size`; and its segments."""
    rng = np.random.default_rng(seed)
    gallery = filled(kind, size, rng)
    times = []
    for session in range(1, repeats + 1):
        batch = unit(rng, SESSION)
        clock = time.perf_counter()
        gallery.add(batch, sample_ids=np.arange(SESSION), class_ids=rng.integers(0, 1000, SESSION), session=session, generation=session)
        times.append(time.perf_counter() - clock)
    return float(np.median(times)), len(gallery.segments)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
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
    for kind in args.kinds.split(","):
        small, _ = add_seconds(kind, args.small, repeats=args.repeats)
        large, segments = add_seconds(kind, args.large, repeats=args.repeats)
        ratio = large / small
        passed = ratio < TARGETS[kind]
        ok &= passed
        print(f"{kind:<6} {small * 1e3:>12.1f} ms {large * 1e3:>14.1f} ms {segments:>9} {ratio:>7.2f} {'<' + str(TARGETS[kind]):>7} "
              f"{'ok' if passed else 'MISSED'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
