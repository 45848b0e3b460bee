"""Streams that are written down: `explicit` (class lists, or Rainbow-Memory / CVS JSON collections) and `stream-file`.

JSON collections: a directory of `{dataset}_train_{setup}_rand{seed}_cls{n}_task{i}.json`
files, each a list of `{"klass", "file_name", "label"}` records; `file_name` is relative to
the data set's root and must name a sample the data set reports (image-folder,
tiny-imagenet). Their queries are what the collection's test files name
(`{dataset}_test_rand{seed}_cls{n}_task{i}.json`, as CVS's loaders read them), else the data
set's official test split of the stream's classes, else every sample of those classes that no
collection names. A `val` file's samples are the validation samples of its session (role `val`:
never trained on, indexed or replayed). The names are in `cvstream.sessions.collections`.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from cvstream.errors import DataError, ScenarioError
from cvstream.registry import Params
from cvstream.sessions.collections import TRAIN_FILE, task_file
from cvstream.sessions.datasets import LabelSet
from cvstream.sessions.paths import inside
from cvstream.sessions.streams import SETUPS, Stream, StreamParams, StreamSetup, assemble, split_pools

def _collection_error(message: str) -> DataError:
    return DataError(message, key_path="stream.collections")


SessionSpec = list[int | str] | dict[int | str, int]


class ExplicitParams(StreamParams):
    sessions: list[SessionSpec] | None = Field(
        None, description="one entry per session: a list of classes (ids or names), or {class: samples}; a class may recur"
    )
    collections: str | None = Field(None, description="a directory (inside the data root) of Rainbow-Memory / CVS JSON collections")
    collection: str | None = Field(None, description="which collection, e.g. cifar100_train_general10_rand1_cls20, when the directory holds several")
    home: Literal["major", "first"] = Field(
        "major", description="a class's home session: where most of its samples arrive (ties: the earliest), or where it first appears"
    )

    @model_validator(mode="after")
    def _one_source(self):
        if (self.sessions is None) == (self.collections is None):
            raise ValueError("give exactly one of 'sessions' (class lists) or 'collections' (a directory of JSON files)")
        if self.class_order is not None:
            raise ValueError("an explicit stream lists its classes itself; remove class_order")
        if self.sessions is not None:
            for t, spec in enumerate(self.sessions):
                if not spec:
                    raise ValueError(f"session {t} lists no classes")
                if isinstance(spec, dict) and any(n < 1 for n in spec.values()):
                    raise ValueError(f"session {t}: sample counts must be at least 1")
        return self


def resolve_class(token: int | str, label_set: LabelSet, *, key_path: str) -> int:
    """A class id or an original class name -> the class id; an unknown class is the user's error."""
    names = label_set.class_names
    if isinstance(token, str):
        if token in names:
            return names.index(token)
        if token.strip().lstrip("-").isdigit():
            token = int(token)
        else:
            close = difflib.get_close_matches(token, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ScenarioError(f"unknown class {token!r}{hint}; the data set has {len(names)} classes", key_path=key_path)
    if not 0 <= token < len(names):
        raise ScenarioError(f"unknown class id {token}; the data set's ids are 0..{len(names) - 1}", key_path=key_path)
    return int(token)


def home_sessions(session_of: list[np.ndarray], labels: np.ndarray, rule: str) -> dict[int, int]:
    """Home session of every class that arrives, by the `major` or `first` rule."""
    counts: dict[int, list[int]] = {}
    for t, ids in enumerate(session_of):
        classes, n = np.unique(labels[ids], return_counts=True)
        for c, k in zip(classes.tolist(), n.tolist()):
            counts.setdefault(c, [0] * len(session_of))[t] = k
    if rule == "first":
        return {c: next(t for t, k in enumerate(per) if k) for c, per in counts.items()}
    return {c: int(np.argmax(per)) for c, per in counts.items()}


@SETUPS.register("explicit")
class Explicit(StreamSetup):
    """Exactly what is written: per-session class lists with optional counts, or JSON collections."""

    Params = ExplicitParams

    def build(self, label_set: LabelSet, seed: int) -> Stream:
        held: list[np.ndarray] | None = None
        if self.params.collections is not None:
            arrivals, held, queries = self._from_collections(label_set)
        else:
            arrivals, queries = self._from_lists(label_set, seed)
        home = home_sessions([np.concatenate([a, *held[t : t + 1]]) if held else a for t, a in enumerate(arrivals)],
                             label_set.labels, self.params.home)
        new_classes = [np.array(sorted(c for c, h in home.items() if h == t), dtype=np.int64) for t in range(len(arrivals))]
        stream = assemble(self.params, label_set, arrivals=arrivals, new_classes=new_classes, queries=queries, seed=seed)
        if held:
            stream = Stream([replace(s, val_ids=np.sort(held[s.index])) for s in stream], labels=stream.labels, home_session=stream.home_session)
        return stream

    def _from_lists(self, label_set: LabelSet, seed: int) -> tuple[list[np.ndarray], dict]:
        specs: list[dict[int, int | None]] = []
        for t, spec in enumerate(self.params.sessions):
            items = spec.items() if isinstance(spec, dict) else ((c, None) for c in spec)
            wanted: dict[int, int | None] = {}
            for token, count in items:
                c = resolve_class(token, label_set, key_path=f"stream.sessions[{t}]")
                if c in wanted:
                    raise ScenarioError(f"lists class {token!r} twice", key_path=f"stream.sessions[{t}]")
                wanted[c] = count
            specs.append(wanted)
        classes = np.array(sorted({c for wanted in specs for c in wanted}), dtype=np.int64)
        pools = split_pools(self.params, label_set, classes, seed)
        position = {int(c): i for i, c in enumerate(classes)}
        taken = np.zeros(len(classes), dtype=np.int64)  # pools are shuffled: take from the front, never twice
        arrivals = []
        for t, wanted in enumerate(specs):
            chunks = []
            for c, count in wanted.items():
                i = position[c]
                left = int(pools.train_counts[i] - taken[i])
                n = left if count is None else count
                if n > left or n == 0:
                    raise ScenarioError(
                        f"class {c} ({label_set.class_names[c]}) has {left} training samples left, the session asks for "
                        f"{'all of them' if count is None else count}",
                        key_path=f"stream.sessions[{t}]",
                    )
                start = pools.train_start[i] + taken[i]
                chunks.append(pools.train_ids[start : start + n])
                taken[i] += n
            arrivals.append(np.concatenate(chunks))
        return arrivals, pools.queries()

    def _from_collections(self, label_set: LabelSet) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
        """Per session its training arrivals and its validation samples (the val files), and the queries per class."""
        p = self.params
        if self.data_root is None:
            raise ScenarioError("JSON collections need a data root", key_path="stream.collections")
        folder = inside(p.collections, self.data_root, what="collections directory", key_path="stream.collections")
        if not folder.is_dir():
            raise _collection_error(f"collections directory {folder} not found")
        if label_set.file_names is None:
            raise _collection_error("this data set does not report file names, so JSON collections cannot name its samples; use image-folder or tiny-imagenet")
        files = collection_files(folder, p.collection)
        by_name = {name: i for i, name in enumerate(label_set.file_names)}
        arrivals, held = [], []
        for path, val in zip(files, validation_files(folder, files)):
            held.append(read_collection(val, by_name=by_name, label_set=label_set) if val is not None else np.empty(0, np.int64))
            arrivals.append(read_collection(path, by_name=by_name, label_set=label_set))
        named = np.concatenate(arrivals + held)
        unique, counts = np.unique(named, return_counts=True)
        if (counts > 1).any():
            raise _collection_error(f"{folder}: sample {label_set.file_names[unique[counts > 1][0]]} is named {int(counts.max())} times across the collections")
        classes = np.unique(label_set.labels[named])
        in_stream = np.isin(label_set.labels, classes)
        tests = query_files(folder, files)
        if tests:
            candidates = np.unique(np.concatenate([read_collection(path, by_name=by_name, label_set=label_set) for path in tests]))
            trained = np.flatnonzero(np.isin(candidates, named))
            if len(trained):
                raise _collection_error(f"{folder}: {label_set.file_names[candidates[trained[0]]]} is named by a test file and a train file; a query is never trained on")
            foreign = np.flatnonzero(~in_stream[candidates])
            if len(foreign):
                raise _collection_error(f"{folder}: the test files name {label_set.file_names[candidates[foreign[0]]]}, of a class that no train file holds")
        elif label_set.test_mask is not None:
            trained_tests = np.flatnonzero(label_set.test_mask[named])
            if len(trained_tests):
                raise _collection_error(f"{folder}: {label_set.file_names[named[trained_tests[0]]]} is in the data set's test split; collections may only name training images")
            candidates = np.flatnonzero(in_stream & label_set.test_mask)
        else:
            unused = np.ones(len(label_set.labels), dtype=bool)
            unused[named] = False
            candidates = np.flatnonzero(in_stream & unused)
        queries = {int(c): np.empty(0, np.int64) for c in classes}
        cand_labels = label_set.labels[candidates]
        for c in classes:
            queries[int(c)] = candidates[cand_labels == c]
        empty = [int(c) for c in classes if len(queries[int(c)]) == 0]
        if empty:
            why = "the test files name none of it" if tests else "every one is named by a collection"
            raise _collection_error(f"{folder}: class {label_set.class_names[empty[0]]} has no sample to query: {why}")
        return arrivals, held, queries


def collection_files(folder: Path, wanted: str | None) -> list[Path]:
    """The task files of one collection, in task order; refuses gaps and ambiguity."""
    groups: dict[str, dict[int, Path]] = {}
    for path in folder.iterdir():
        match = TRAIN_FILE.match(path.name)
        if match:
            groups.setdefault(match["name"], {})[int(match["task"])] = path
    if not groups:
        raise _collection_error(f"{folder} holds no JSON collections named {{dataset}}_train_{{setup}}_rand{{seed}}_cls{{n}}_task{{i}}.json")
    if wanted is None:
        if len(groups) > 1:
            raise ScenarioError(f"{folder} holds several collections; choose one of: {', '.join(sorted(groups))}", key_path="stream.collection")
        wanted = next(iter(groups))
    if wanted not in groups:
        raise ScenarioError(f"no collection {wanted!r} in {folder}; there are: {', '.join(sorted(groups))}", key_path="stream.collection")
    tasks = groups[wanted]
    missing = sorted(set(range(max(tasks) + 1)) - set(tasks))
    if missing:
        raise _collection_error(f"{folder}: collection {wanted} lacks task {missing[0]} ({wanted}_task{missing[0]}.json)")
    return [tasks[t] for t in sorted(tasks)]


def validation_files(folder: Path, train_files: list[Path]) -> list[Path | None]:
    """Each task's val file (`{dataset}_val_{setup}_...`), or None where it has none."""
    out = []
    for path in train_files:
        val = path.with_name(path.name.replace("_train_", "_val_", 1))
        out.append(val if val.is_file() else None)
    return out


def query_files(folder: Path, train_files: list[Path]) -> list[Path]:
    """The collection's test files, one per task (none: the queries come from the data set); refuses gaps."""
    match = TRAIN_FILE.match(train_files[0].name)
    paths = [
        folder / task_file(match["dataset"], "test", setup=None, seed=match["seed"], classes=match["classes"], task=t)
        for t in range(len(train_files))
    ]
    present = [path.is_file() for path in paths]
    if any(present) and not all(present):
        missing = paths[present.index(False)]
        raise _collection_error(f"{folder}: collection {match['name']} has test files, but not {missing.name}")
    return paths if all(present) else []


def read_collection(path: Path, *, by_name: dict[str, int], label_set: LabelSet) -> np.ndarray:
    """The sample ids one task file names, checked against the data set."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _collection_error(f"cannot read the collection {path}: {exc}") from None
    if not isinstance(records, list):
        raise _collection_error(f"{path}: expected a list of records, got {type(records).__name__}")
    ids = np.empty(len(records), dtype=np.int64)
    for k, record in enumerate(records):
        if not isinstance(record, dict) or "file_name" not in record:
            raise _collection_error(f"{path}: record {k} has no file_name")
        name = str(record["file_name"])
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts:
            raise _collection_error(f"{path}: record {k} names {name!r}, which leaves the data set's root")
        sample = by_name.get(str(pure))
        if sample is None:
            raise _collection_error(f"{path}: record {k} names {name!r}, which is not in the data set")
        klass = record.get("klass")
        if klass is not None and str(klass) != label_set.class_names[label_set.labels[sample]]:
            raise _collection_error(
                f"{path}: record {k} says {name!r} is a {klass!r}, the data set says {label_set.class_names[label_set.labels[sample]]!r}"
            )
        ids[k] = sample
    return ids


class StreamFileParams(Params):
    path: str = Field(..., description="a stream.parquet written by `cvstream stream` or a run; relative to the scenario file")


@SETUPS.register("stream-file")
class StreamFile(StreamSetup):
    """Replays a written stream exactly: same sessions, same samples, same queries, same home sessions."""

    Params = StreamFileParams

    def build(self, label_set: LabelSet, seed: int) -> Stream:
        path = Path(self.params.path).expanduser()
        if not path.is_absolute():
            path = (self.base_dir or Path.cwd()) / path
        return Stream.read_parquet(path, labels=label_set.labels)

