"""Rainbow-Memory / CVS JSON collections: their file names (read and written) and the writer.

The names follow the official CVS code (ivclab/CVS, `loader/tinyimagenet.py`, `train.py` and
`collections/cifar100/`): `{dataset}_train_{setup}_rand{seed}_cls{n}_task{t}.json`,
`{dataset}_val_{setup}_rand{seed}_cls{n}_task{t}.json` and `{dataset}_test_rand{seed}_cls{n}_task{t}.json`;
the test files name no setup, because CVS shares them between setups. Each file is a list of
`{"klass", "file_name", "label"}` records; `file_name` is relative to the data set's root,
which the official loaders join with their own root.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from cvstream.errors import DataError, ScenarioError, UserError
from cvstream.registry import Params
from cvstream.sessions.datasets import LabelSet
from cvstream.sessions.streams import Stream

TRAIN_FILE = re.compile(r"^(?P<name>(?P<dataset>.+?)_train_.+_rand(?P<seed>\d+)_cls(?P<classes>\d+))_task(?P<task>\d+)\.json$")

CVS_DATASETS = {"tiny-imagenet": "tinyimagenet200"}  # data sets whose CVS name is not cvstream's
ROLES = ("train", "val", "test")


def task_file(dataset: str, role: str, *, setup: str | None, seed: int | str, classes: int | str, task: int | str) -> str:
    """The name of one task file; test files name no setup, as in CVS's own collections."""
    middle = "" if role == "test" else f"_{setup}"
    return f"{dataset}_{role}{middle}_rand{seed}_cls{classes}_task{task}.json"


def cvs_setup(setup: str, params: Params) -> str:
    """The stream setup as CVS spells it in file names (`general30`, `blurry10`, `disjoint`); others keep cvstream's name."""
    if setup == "general":
        return f"general{round(100 * params.old_ratio)}"
    if setup == "blurry":
        return f"blurry{round(100 * params.blurry_ratio)}"
    return setup


def collection_records(stream: Stream, label_set: LabelSet, *, dataset: str) -> list[dict[str, list[dict]]]:
    """Per session, the records of its train, val and test files.

    `val` holds the session's validation samples (the stream's `val` role), `train` its training
    arrivals, `test` the queries of the
    classes at home in the session, so that tasks 0..t are the queries after session t, as the
    official loaders concatenate them. Labels number classes in order of first appearance.
    """
    if label_set.file_names is None:
        raise DataError(
            f"the data set {dataset} reports no per-sample file names, so its stream cannot be written as CVS JSON "
            "collections (image-folder and tiny-imagenet can); use --format parquet",
            key_path="dataset.name",
        )
    split = next((s.index for s in stream if not np.array_equal(s.train_ids, s.gallery_ids)), None)
    if split is not None:
        raise ScenarioError(
            f"session {split} keeps gallery-only items, but a CVS train file is both the training set and the gallery; "
            "set it to 0 to write CVS collections",
            key_path="stream.gallery_only_fraction",
        )
    labels = label_set.labels
    queries = np.unique(np.concatenate([s.query_ids for s in stream])) if len(stream) else np.empty(0, np.int64)
    query_home = stream.home_of(labels[queries])
    parts = []
    for s in stream:
        parts.append({"train": s.train_ids, "val": s.val_ids, "test": queries[query_home == s.index]})
    seen = labels[np.concatenate([ids for part in parts for ids in part.values()])] if parts else np.empty(0, np.int64)
    _, first = np.unique(seen, return_index=True)
    label_of = {int(c): k for k, c in enumerate(seen[np.sort(first)])}
    names, files = label_set.class_names, label_set.file_names
    return [
        {role: [{"klass": names[labels[i]], "file_name": files[i], "label": label_of[int(labels[i])]} for i in ids.tolist()]
         for role, ids in part.items()}
        for part in parts
    ]


def write_collections(
    stream: Stream, label_set: LabelSet, out: Path, *, dataset: str, setup: str, seed: int
) -> list[Path]:
    """Write the stream into `out` as CVS JSON collections; returns the files written.

    `dataset` is cvstream's name (written in CVS's spelling where it differs), `setup` CVS's
    (`cvs_setup`); `n` in the names is the last session's new classes, as every session's in CVS.
    Every file is written to a temporary name first and renamed once all are written; task files
    left from a longer stream of the same name are removed, so the directory reads back as written.
    """
    records = collection_records(stream, label_set, dataset=dataset)
    name = CVS_DATASETS.get(dataset, dataset)
    classes = len(stream[-1].new_classes) if len(stream) else 0

    def path(role: str, task: int | str) -> Path:
        return out / task_file(name, role, setup=setup, seed=seed, classes=classes, task=task)

    payloads = {path(role, t): json.dumps(files[role]) for t, files in enumerate(records) for role in ROLES}
    temporary = {target: target.with_name(f".{target.name}.tmp{os.getpid()}") for target in payloads}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for target, text in payloads.items():
            with open(temporary[target], "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        for target, tmp in temporary.items():
            os.replace(tmp, target)
        for role in ROLES:
            for stale in out.glob(path(role, "*").name):
                task = stale.name.removesuffix(".json").rpartition("_task")[2]
                if task.isdigit() and int(task) >= len(records):
                    stale.unlink()
    except OSError as exc:
        for tmp in temporary.values():
            tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write the collections into {out}: {exc.strerror or exc}") from None
    return list(payloads)
