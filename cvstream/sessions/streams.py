"""Streams: labels in, sessions out. Pure functions of (labels, parameters, seed).

A `Stream` is a plain sequence of `Session`s (len, indexing, slicing, iteration). Class
ids are always the data set's original ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Iterator, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from cvstream.errors import ScenarioError
from cvstream.registry import Params, Registry
from cvstream.sessions.datasets import LabelSet
from cvstream.sessions.rng import numpy_rng


@dataclass(frozen=True)
class Session:
    index: int
    new_classes: np.ndarray  # classes whose home session is this one
    train_ids: np.ndarray  # samples that arrive for training
    gallery_ids: np.ndarray  # samples added to the gallery (by default the training arrivals)
    query_ids: np.ndarray  # held-out samples evaluated after this session


class Stream(Sequence):
    """The sessions of one scenario, with the bookkeeping every consumer needs."""

    def __init__(self, sessions: list[Session], *, labels: np.ndarray, home_session: dict[int, int]):
        self.sessions = list(sessions)
        self.labels = labels
        self.home_session = dict(home_session)

    def __len__(self) -> int:
        return len(self.sessions)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Stream(self.sessions[index], labels=self.labels, home_session=self.home_session)
        return self.sessions[index]

    def __iter__(self) -> Iterator[Session]:
        return iter(self.sessions)

    def classes_seen(self, t: int) -> np.ndarray:
        return np.array(sorted(c for c, h in self.home_session.items() if h <= t), dtype=np.int64)

    def home_of(self, class_ids: np.ndarray) -> np.ndarray:
        return np.array([self.home_session[int(c)] for c in class_ids], dtype=np.int64)

    def to_frame(self) -> pd.DataFrame:
        """One row per (sample, role): a training arrival that is also a gallery item has two rows."""
        frames = []
        queried: set[int] = set()
        for s in self.sessions:
            new_queries = np.array([q for q in s.query_ids if int(q) not in queried], dtype=np.int64)
            queried.update(int(q) for q in new_queries)
            for role, ids in (("train", s.train_ids), ("gallery", s.gallery_ids), ("query", new_queries)):
                frames.append(
                    pd.DataFrame(
                        {"sample_id": ids.astype(np.int64), "class_id": self.labels[ids].astype(np.int64),
                         "session": np.full(len(ids), s.index, dtype=np.int64), "role": role}
                    )
                )
        return pd.concat(frames, ignore_index=True)


class StreamParams(Params):
    class_order: list[int] | None = Field(None, description="explicit class order; default a seeded permutation")
    query_fraction: float | None = Field(
        None, gt=0, lt=1, description="share of each class held out as queries; default the data set's test split, else 0.25"
    )
    gallery_only_fraction: float = Field(0.0, ge=0, lt=1, description="share of each session's arrivals kept out of training")
    queries: Literal["seen", "all"] = "seen"


class StreamSetup:
    name: ClassVar[str]
    Params: ClassVar[type[StreamParams]]

    def __init__(self, params: StreamParams):
        self.params = params

    def classes_needed(self) -> int:
        raise NotImplementedError

    def build(self, label_set: LabelSet, seed: int) -> Stream:
        raise NotImplementedError


SETUPS: Registry[StreamSetup] = Registry("stream setup")


def class_order(params: StreamParams, label_set: LabelSet, needed: int, seed: int) -> np.ndarray:
    available = label_set.num_classes
    if params.class_order is not None:
        order = np.asarray(params.class_order, dtype=np.int64)
        bad = [int(c) for c in order if not 0 <= c < available]
        if bad:
            raise ScenarioError(f"class ids {bad[:5]} are not in the data set (0..{available - 1})", key_path="stream.class_order")
        if len(set(order.tolist())) != len(order):
            raise ScenarioError("lists a class twice", key_path="stream.class_order")
        if len(order) < needed:
            raise ScenarioError(f"lists {len(order)} classes, the stream needs {needed}", key_path="stream.class_order")
        return order[:needed]
    if needed > available:
        raise ScenarioError(
            f"the stream needs {needed} classes, the data set has {available}", key_path="stream.initial_classes"
        )
    return numpy_rng(seed, "class_order").permutation(available)[:needed].astype(np.int64)


def split_queries(params: StreamParams, label_set: LabelSet, classes: np.ndarray, seed: int) -> tuple[dict, dict]:
    """Per class: (training arrivals, held-out queries). Queries are never trained on nor indexed."""
    rng = numpy_rng(seed, "split")
    labels = label_set.labels
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(label_set.num_classes + 1))
    train, query = {}, {}
    use_official = params.query_fraction is None and label_set.test_mask is not None
    fraction = params.query_fraction if params.query_fraction is not None else 0.25
    for c in classes.tolist():
        ids = order[bounds[c] : bounds[c + 1]]
        if use_official:
            is_test = label_set.test_mask[ids]
            train[c], query[c] = np.sort(ids[~is_test]), np.sort(ids[is_test])
        else:
            ids = rng.permutation(ids)
            n_query = int(round(len(ids) * fraction))
            n_query = min(max(n_query, 1), len(ids) - 1)
            query[c], train[c] = np.sort(ids[:n_query]), np.sort(ids[n_query:])
        if len(train[c]) == 0 or len(query[c]) == 0:
            raise ScenarioError(
                f"class {c} has {len(ids)} samples: too few to hold out queries and still train", key_path="stream.query_fraction"
            )
    return train, query


def assemble(
    params: StreamParams,
    label_set: LabelSet,
    *,
    arrivals: list[np.ndarray],
    new_classes: list[np.ndarray],
    queries: dict[int, np.ndarray],
    seed: int,
) -> Stream:
    """Turn per-session arrivals into sessions: gallery-only hold-out and query sets."""
    home = {int(c): t for t, classes in enumerate(new_classes) for c in classes}
    rng = numpy_rng(seed, "gallery_only")
    all_queries = np.sort(np.concatenate([queries[c] for c in home])) if home else np.empty(0, np.int64)
    sessions = []
    for t, (ids, classes) in enumerate(zip(arrivals, new_classes)):
        ids = np.sort(np.asarray(ids, dtype=np.int64))
        train_ids = ids
        if params.gallery_only_fraction > 0 and len(ids):
            keep = rng.random(len(ids)) >= params.gallery_only_fraction
            train_ids = ids[keep]
        if params.queries == "all":
            query_ids = all_queries
        else:
            seen = [c for c, h in home.items() if h <= t]
            query_ids = np.sort(np.concatenate([queries[c] for c in seen])) if seen else np.empty(0, np.int64)
        sessions.append(
            Session(index=t, new_classes=np.asarray(classes, dtype=np.int64), train_ids=train_ids, gallery_ids=ids, query_ids=query_ids)
        )
    return Stream(sessions, labels=label_set.labels, home_session=home)


class DisjointParams(StreamParams):
    sessions: int = Field(5, ge=1, le=100_000)
    initial_classes: int = Field(20, ge=1)
    classes_per_session: int = Field(20, ge=1)


@SETUPS.register("disjoint")
class Disjoint(StreamSetup):
    """Each class's training samples all arrive in its home session."""

    Params = DisjointParams

    def classes_needed(self) -> int:
        p = self.params
        return p.initial_classes + (p.sessions - 1) * p.classes_per_session

    def build(self, label_set: LabelSet, seed: int) -> Stream:
        p = self.params
        order = class_order(p, label_set, self.classes_needed(), seed)
        train, queries = split_queries(p, label_set, order, seed)
        cuts = [0, p.initial_classes] + [p.initial_classes + k * p.classes_per_session for k in range(1, p.sessions)]
        new_classes = [order[cuts[t] : cuts[t + 1]] for t in range(p.sessions)]
        arrivals = [np.concatenate([train[int(c)] for c in classes]) for classes in new_classes]
        return assemble(p, label_set, arrivals=arrivals, new_classes=new_classes, queries=queries, seed=seed)
