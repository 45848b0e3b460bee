"""Time to build a stream of 1,000,000 samples, 1,000 classes and 100 sessions, for every setup.

Run: `.venv/bin/python benchmarks/streams.py [--samples N --classes C --sessions T]`.
Target: under 5 seconds per setup. Labels only: no images are made.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cvstream.sessions.datasets import LabelSet
from cvstream.sessions.streams import SETUPS, Stream


def cases(classes: int, sessions: int) -> list[tuple[str, dict]]:
    per = classes // sessions
    grid = dict(sessions=sessions, initial_classes=classes - (sessions - 1) * per, classes_per_session=per)
    explicit = [list(range(t * per, (t + 1) * per)) for t in range(sessions)]
    return [
        ("disjoint", grid),
        ("blurry", {**grid, "blurry_ratio": 0.1}),
        ("iblurry", {**grid, "blurry_ratio": 0.1, "disjoint_class_ratio": 0.5}),
        ("iblurry", {**grid, "blurry_ratio": 0.1, "disjoint_class_ratio": 0.5, "stochastic_boundaries": True}),
        ("general", {**grid, "old_ratio": 0.1}),
        ("few-shot", dict(sessions=sessions, initial_classes=classes - (sessions - 1) * 5, ways=5, shots=5)),
        ("explicit", {"sessions": explicit}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1_000)
    parser.add_argument("--sessions", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(args.samples) % args.classes)  # equal classes, samples in random order
    label_set = LabelSet(labels=labels, class_names=tuple(f"c{c}" for c in range(args.classes)))
    print(f"{args.samples:,} samples, {args.classes:,} classes, {args.sessions} sessions")
    print(f"{'setup':<34}{'seconds':>9}{'training arrivals':>20}")
    stream = None
    for name, params in cases(args.classes, args.sessions):
        setup = SETUPS.get(name)
        clock = time.perf_counter()
        built = setup(setup.Params(**params)).build(label_set, 1)
        seconds = time.perf_counter() - clock
        stream = built if name == "disjoint" else stream
        label = name + (" (stochastic boundaries)" if params.get("stochastic_boundaries") else "")
        print(f"{label:<34}{seconds:>9.2f}{sum(len(s.train_ids) for s in built):>20,}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "stream.parquet"
        clock = time.perf_counter()
        stream.to_frame().to_parquet(path, index=False)
        written = time.perf_counter() - clock
        clock = time.perf_counter()
        Stream.read_parquet(path, labels=label_set.labels)
        read = time.perf_counter() - clock
    print(f"{'disjoint -> stream.parquet':<34}{written:>9.2f}")
    print(f"{'stream.parquet -> stream-file':<34}{read:>9.2f}")


if __name__ == "__main__":
    main()
