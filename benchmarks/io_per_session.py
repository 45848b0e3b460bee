"""Bytes a session writes (its files and its checkpoint) at two gallery sizes, for the same new items.

    python benchmarks/io_per_session.py [--small 20] [--large 400] [--per-class 20] [--default-segments]

Two runs of two sessions on one synthetic data set (16 classes of `--big-class` samples): the
first session brings 8 classes of `--small` or `--large` samples each (the gallery then holds 75%
of them, the rest are queries), the second 8 new classes of `--per-class` samples, identical in both runs. Measured:
everything the second session writes into the run folder (tables, gallery segments, metadata
parts, run.json) plus the first session's checkpoint written just before it, hard links to files
already on disk not counted. Each run's gallery uses segments of one session's new items
(`gallery.segment_size`), so that the second session opens a new segment of its own (the first
session's gallery is a whole number of segments); `--default-segments` keeps the default size
(131,072), so that the second session's items join the open segment that holds the first's: the
save keeps that segment's file and writes the new items as a delta next to it
(`cvstream.gallery.store`), where it once wrote the grown segment whole (with the default
arguments, 2.44x before deltas).
Target, in both forms: large / small < 1.3.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cvstream.scenario import Scenario  # noqa: E402
from cvstream.simulator import Hook, Simulator  # noqa: E402

CLASSES = 8  # per session


def files_of(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under `folder`: relative path -> (inode, size, mtime)."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            try:
                st = path.stat()
            except FileNotFoundError:  # a temporary file renamed meanwhile
                continue
            out[str(path.relative_to(folder))] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def written(before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]) -> dict[str, int]:
    """Bytes of the files that are new or replaced between two `files_of`, by kind; a new link to a file that
    was already there costs nothing."""
    known = set(before.values())  # a file by inode, size and mtime (an inode alone is reused once its file is gone)
    out: dict[str, int] = {}
    for name, entry in after.items():
        if entry in known:
            continue
        known.add(entry)  # two new links to one new file: written once
        out[kind_of(name)] = out.get(kind_of(name), 0) + entry[1]
    return out


def kind_of(name: str) -> str:
    parts = Path(name).parts
    if parts[0] == "checkpoint":
        return "checkpoint"
    if parts[0] == "gallery-metadata":
        return "gallery metadata"
    if parts[-1].startswith("gallery-") and parts[-1].endswith((".faiss", ".npz")):  # segment files and their deltas
        return "gallery segments"
    if parts[-1].endswith(".parquet"):
        return "tables"
    return "other"


class SessionWrites(Hook):
    """The run folder's files at the end of every session's own files (before that session's checkpoint)."""

    def __init__(self):
        self.snapshots: list[dict] = []

    def after_session(self, sim, result) -> None:
        self.snapshots.append(files_of(sim.run_dir))


def stream_frame(*, first: int, per_class: int, big_class: int) -> "pd.DataFrame":
    """A two-session disjoint stream: 8 classes of `first` samples, then 8 of `per_class`."""
    import pandas as pd

    sessions = [(0, np.arange(CLASSES), first), (1, np.arange(CLASSES, 2 * CLASSES), per_class)]
    rows = []
    for session, classes, count in sessions:
        for c in classes:
            ids = c * big_class + np.arange(count)  # the synthetic set lays out class c's samples at c * n ...
            queries = ids[: max(1, count // 4)]
            gallery = ids[len(queries):]
            for role, chosen in (("train", gallery), ("gallery", gallery), ("query", queries)):
                rows.append(pd.DataFrame({"sample_id": chosen, "class_id": c, "session": session, "role": role, "home_session": session}))
    return pd.concat(rows, ignore_index=True)


def scenario(stream_path: Path, *, big_class: int, segment_size: int | None) -> Scenario:
    gallery = {"index": "flat"} | ({"segment_size": segment_size} if segment_size else {})
    return Scenario.from_dict({
        "name": "io", "seed": 0, "device": "cpu",
        "dataset": {"name": "synthetic", "classes": 2 * CLASSES, "samples_per_class": big_class, "image_size": 16, "channels": 1},
        "stream": {"setup": "stream-file", "path": str(stream_path)},
        "gallery": gallery,
        "model": {"backbone": "convnet", "embedding_dim": 32, "width": 8},
        "training": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0},
        "method": {"name": "cvs"},
        "replay": {"size": 64},
        "evaluation": {"recall_at": [1], "probe_items": 50},
    })


def session_bytes(*, first: int, per_class: int, big_class: int, default_segments: bool, work: Path) -> dict:
    """Bytes written by the second session (and the first session's checkpoint) of one run."""
    work.mkdir(parents=True, exist_ok=True)
    stream_path = work / "stream.parquet"
    stream_frame(first=first, per_class=per_class, big_class=big_class).to_parquet(stream_path, index=False)
    new_items = CLASSES * (per_class - max(1, per_class // 4))
    meter = SessionWrites()
    sim = Simulator(scenario(stream_path, big_class=big_class, segment_size=None if default_segments else new_items),
                    out_dir=work / "run", hooks=[meter])
    sim.run()
    first_items = CLASSES * (first - max(1, first // 4))
    # The first session's checkpoint is written after its snapshot: the second window holds it and session 2's files.
    by_kind = written(meter.snapshots[0], meter.snapshots[1])
    whole = io.BytesIO()
    sim.gallery.metadata().to_parquet(whole, index=False)  # what the session wrote before the parts: the whole table
    return {"gallery_before": first_items, "new_items": new_items, "bytes": sum(by_kind.values()), "by_kind": by_kind,
            "whole_table_bytes": len(whole.getvalue())}


def measure(*, small: int, large: int, per_class: int, big_class: int, default_segments: bool = False, work: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(work or tmp)
        a = session_bytes(first=small, per_class=per_class, big_class=big_class, default_segments=default_segments, work=base / "small")
        b = session_bytes(first=large, per_class=per_class, big_class=big_class, default_segments=default_segments, work=base / "large")
    return {"small": a, "large": b, "ratio": b["bytes"] / a["bytes"]}


def describe(result: dict) -> str:
    a, b = result["small"], result["large"]
    kinds = sorted(set(a["by_kind"]) | set(b["by_kind"]))
    lines = [f"gallery {a['gallery_before']:,} -> +{a['new_items']:,} items: {a['bytes'] / 1024:8.1f} KiB;  "
             f"gallery {b['gallery_before']:,} -> +{b['new_items']:,} items: {b['bytes'] / 1024:8.1f} KiB;  ratio {result['ratio']:.3f}"]
    for kind in kinds:
        lines.append(f"    {kind:18s} {a['by_kind'].get(kind, 0) / 1024:8.1f} KiB  {b['by_kind'].get(kind, 0) / 1024:8.1f} KiB")
    lines.append(f"    (a whole gallery.parquet, as written before the parts: {a['whole_table_bytes'] / 1024:.1f} KiB and "
                 f"{b['whole_table_bytes'] / 1024:.1f} KiB)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=20, help="samples per class of the first session, small run")
    parser.add_argument("--large", type=int, default=400, help="the same, large run")
    parser.add_argument("--per-class", type=int, default=20, help="samples per class of the measured session")
    parser.add_argument("--big-class", type=int, default=None, help="samples per class of the data set (default: --large)")
    parser.add_argument("--default-segments", action="store_true", help="the default segment size instead of one session's items")
    args = parser.parse_args()
    result = measure(small=args.small, large=args.large, per_class=args.per_class, big_class=args.big_class or max(args.large, args.per_class),
                     default_segments=args.default_segments)
    print(describe(result))
    ok = result["ratio"] < 1.3
    print(f"bytes per session, gallery {result['large']['gallery_before']:,} / {result['small']['gallery_before']:,}: "
          f"{result['ratio']:.3f} (target < 1.3) {'ok' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
