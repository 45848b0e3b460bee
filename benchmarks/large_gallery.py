"""A gallery of many items at feature level: `features` + `mlp` + an approximate index (ivfpq or hnsw).

    python benchmarks/large_gallery.py [--items 10000000] [--index ivfpq] [--dim 32] [--check 1000]

Writes a clustered feature set (.npy) to --work, runs one session that trains the MLP on a
sample of the arrivals (stream.gallery_only_fraction) and indexes all of them, evaluates on
a sampled query set (stream.query_fraction), then re-checks a sample of those queries by
exact search over the same items, re-embedded chunk by chunk, so the recall lost to the
approximate index is measured. Prints items, seconds, peak RSS, gallery bytes, and
R@1 / R@10 approximate vs exact.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvstream.models.trainer import embed  # noqa: E402
from cvstream.scenario import Scenario  # noqa: E402
from cvstream.simulator import Simulator  # noqa: E402


def make_features(folder: Path, *, items: int, classes: int, dim: int, seed: int = 0) -> tuple[Path, Path]:
    """Clustered vectors (class centre + noise), written chunk by chunk: memory stays one chunk."""
    folder.mkdir(parents=True, exist_ok=True)
    vectors, labels = folder / f"features-{items}-{classes}-{dim}.npy", folder / f"labels-{items}-{classes}-{dim}.npy"
    if vectors.is_file() and labels.is_file():
        return vectors, labels
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    y = rng.integers(0, classes, items)
    out = np.lib.format.open_memmap(vectors, mode="w+", dtype=np.float32, shape=(items, dim))
    for start in range(0, items, 1_000_000):
        stop = min(start + 1_000_000, items)
        out[start:stop] = centres[y[start:stop]] + 1.5 * rng.standard_normal((stop - start, dim), dtype=np.float32)
    out.flush()
    del out
    np.save(labels, y)
    return vectors, labels


def scenario(vectors: Path, labels: Path, *, classes: int, items: int, index: str, dim: int) -> Scenario:
    train = 50_000  # samples the MLP trains on; every other arrival is a gallery-only item
    gallery = {"index": index, "nlist": 4096, "nprobe": 16, "pq_m": 16, "train_size": 200_000, "hnsw_m": 16}
    return Scenario.from_dict({
        "name": "large-gallery", "seed": 0, "device": "auto",
        "dataset": {"name": "features", "path": str(vectors), "labels": str(labels)},
        "stream": {"setup": "disjoint", "sessions": 1, "initial_classes": classes, "classes_per_session": classes,
                   "query_fraction": 0.001, "gallery_only_fraction": max(0.0, 1 - train / items)},
        "model": {"backbone": "mlp", "embedding_dim": 64, "width": 16},
        "training": {"epochs": 1, "batch_size": 256, "lr": 0.03, "warmup_epochs": 0, "eval_batch_size": 65536},
        "method": {"name": "finetune"},
        "replay": {"size": 0},
        "gallery": gallery,
        "evaluation": {"recall_at": [1, 10], "map_at_r": False, "probe_items": 0},
    })


def exact_check(sim: Simulator, *, queries: int, chunk: int = 1_000_000) -> dict:
    """R@1 and R@10 of a sample of the session's queries: the gallery's index against exact search of the same items."""
    session = sim.stream[0]
    rng = np.random.default_rng(1)
    sample = np.sort(rng.choice(session.query_ids, min(queries, len(session.query_ids)), replace=False))
    model, images, batch = sim.model, sim.images, sim.scenario.training.eval_batch_size
    q = embed(model, images, sample, batch_size=batch, amp=sim.scenario.training.amp)
    truth = sim.labels_of(sample)
    _, approx_items = sim.gallery.search(q, 10)
    approx = sim.gallery.class_of(approx_items)
    best_scores = np.full((len(q), 10), -np.inf, np.float32)
    best_items = np.full((len(q), 10), -1, np.int64)
    n = len(sim.gallery)
    for start in range(0, n, chunk):  # the exact vectors of the items, by the generation that indexed them
        items = np.arange(start, min(start + chunk, n), dtype=np.int64)
        flat = faiss.IndexFlatIP(q.shape[1])
        flat.add(embed(model, images, sim.gallery.sample_ids_of(items), batch_size=batch, amp=sim.scenario.training.amp))
        scores, found = flat.search(q, 10)
        scores = np.hstack([best_scores, scores])
        found = np.hstack([best_items, items[found]])
        top = np.argsort(-scores, axis=1)[:, :10]
        best_scores, best_items = np.take_along_axis(scores, top, 1), np.take_along_axis(found, top, 1)
    exact = sim.gallery.class_of(best_items)
    out = {"queries_checked": int(len(sample))}
    for k in (1, 10):
        out[f"exact_r@{k}"] = float((exact[:, :k] == truth[:, None]).any(1).mean())
        out[f"approx_r@{k}"] = float((approx[:, :k] == truth[:, None]).any(1).mean())
        out[f"loss_r@{k}"] = out[f"exact_r@{k}"] - out[f"approx_r@{k}"]
    out["top1_agreement"] = float((approx_items[:, 0] == best_items[:, 0]).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--classes", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=32, help="dimension of the precomputed features")
    parser.add_argument("--index", default="ivfpq", choices=["ivfpq", "hnsw", "ivf", "flat"])
    parser.add_argument("--check", type=int, default=1000, help="queries re-checked by exact search")
    parser.add_argument("--work", default="/tmp/cvstream-large-gallery", help="folder for the generated feature files")
    args = parser.parse_args()

    clock = time.perf_counter()
    vectors, labels = make_features(Path(args.work), items=args.items, classes=args.classes, dim=args.dim)
    made = time.perf_counter() - clock
    sim = Simulator(scenario(vectors, labels, classes=args.classes, items=args.items, index=args.index, dim=args.dim), write=False)
    clock = time.perf_counter()
    result = sim.run()
    ran = time.perf_counter() - clock
    ends = result.events[result.events.kind == "session_end"].detail.map(json.loads).iloc[-1]
    m = result.metrics.query("gallery_view == 'mixed' and subset == 'all'").set_index("metric").value
    clock = time.perf_counter()
    check = exact_check(sim, queries=args.check)
    checked = time.perf_counter() - clock
    print(f"items {len(sim.gallery):,} ({args.index}, {sim.scenario.model.embedding_dim}-d), features made in {made:.0f} s, "
          f"run {ran:.0f} s, exact re-check {checked:.0f} s")
    print(f"peak RSS {ends['peak_rss_bytes'] / 2**30:.2f} GiB, gallery {ends['gallery_bytes'] / 2**30:.2f} GiB, "
          f"feature array {len(sim.images) * args.dim * 4 / 2**30:.2f} GiB")
    print(f"evaluation: {int(result.metrics.n_queries.max()):,} sampled queries, R@1 {m['recall@1']:.4f}, R@10 {m['recall@10']:.4f}")
    print("exact re-check: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in check.items()))


if __name__ == "__main__":
    main()
