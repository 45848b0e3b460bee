"""Streams: labels in, sessions out. Pure functions of (labels, parameters, seed).

A `Stream` is a plain sequence of `Session`s (len, indexing, slicing, iteration). Class
ids are always the data set's original ids. The setups live in `cvstream.sessions.setups`,
one module per family; this module holds what they share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Iterator, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from cvstream.errors import DataError, ScenarioError
from cvstream.registry import Params, Registry
from cvstream.sessions.datasets import LabelSet
from cvstream.sessions.rng import numpy_rng

ROLES = ("train", "gallery", "query", "val")


def equal_shares(available: np.ndarray, total: int, priority: np.ndarray | None = None) -> np.ndarray:
    """Split `total` as equally as `available` allows (water-filling, largest remainder); never more than a slot holds.

    Every slot gets `min(available, level)` for the highest level that `total` covers; the units left over
    go one each to the open slots first in `priority` (default: index order). So shares differ by at most one
    except where a slot ran dry, and the result sums to min(total, available.sum()).
    """
    available = np.asarray(available, dtype=np.int64)
    if total >= available.sum():
        return available.copy()
    low, high = 0, int(available.max(initial=0))  # the level: sum(min(available, level)) <= total < ... at level + 1
    while low < high:
        mid = (low + high + 1) // 2
        if np.minimum(available, mid).sum() <= total:
            low = mid
        else:
            high = mid - 1
    shares = np.minimum(available, low)
    order = np.arange(len(available)) if priority is None else np.asarray(priority, np.int64)
    rank = np.empty(len(available), dtype=np.int64)
    rank[order] = np.arange(len(available))
    open_slots = np.flatnonzero(available > low)
    open_slots = open_slots[np.argsort(rank[open_slots], kind="stable")]
    shares[open_slots[: int(total - shares.sum())]] += 1
    return shares


def validation_split(arrivals: np.ndarray, labels: np.ndarray, *, fraction: float, seed: int, session: int) -> np.ndarray:
    """The validation queries of one session (`training.validation_fraction`, as CVS's val files): that share of
    each class's arrivals, seeded per session. `labels` are the arrivals' classes. Pure, so that the engine and
    the CVS collection writer hold out the same samples."""
    if fraction == 0:
        return np.empty(0, np.int64)
    order = np.argsort(arrivals, kind="stable")
    arrivals, labels = np.asarray(arrivals, np.int64)[order], np.asarray(labels)[order]
    rng = numpy_rng(seed, "validation", session)
    held = np.zeros(len(arrivals), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        held[rng.permutation(members)[: int(len(members) * fraction)]] = True
    return arrivals[held]


def _stream_file_error(message: str) -> DataError:
    return DataError(message, key_path="stream.path")


@dataclass(frozen=True)
class Session:
    index: int
    new_classes: np.ndarray  # classes whose home session is this one, sorted
    train_ids: np.ndarray  # samples that arrive for training
    gallery_ids: np.ndarray  # samples added to the gallery (by default the training arrivals)
    query_ids: np.ndarray  # held-out samples evaluated after this session
    # Held-out arrivals that pick the best epoch: never trained on, indexed or replayed.
    val_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


class Stream(Sequence):
    """The sessions of one scenario, with the bookkeeping every consumer needs."""

    def __init__(self, sessions: list[Session], *, labels: np.ndarray, home_session: dict[int, int]):
        self.sessions = list(sessions)
        self.labels = labels
        self.home_session = dict(home_session)
        size = max([int(labels.max()) + 1 if len(labels) else 0, *[c + 1 for c in self.home_session]])
        self.home_array = np.full(size, -1, dtype=np.int64)  # -1: the class is not in the stream
        if self.home_session:
            self.home_array[np.fromiter(self.home_session, np.int64)] = np.fromiter(self.home_session.values(), np.int64)
        self._first_trained: np.ndarray | None = None  # per class, the first session with a training arrival of it

    def __len__(self) -> int:
        return len(self.sessions)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Stream(self.sessions[index], labels=self.labels, home_session=self.home_session)
        return self.sessions[index]

    def __iter__(self) -> Iterator[Session]:
        return iter(self.sessions)

    def with_validation(self, fraction: float, seed: int) -> "Stream":
        """The stream with `fraction` of each session's training arrivals per class moved to its validation samples
        (`validation_split`): out of training and out of the gallery."""
        if fraction == 0:
            return self
        sessions = []
        for s in self.sessions:
            val = validation_split(s.train_ids, self.labels[s.train_ids], fraction=fraction, seed=seed, session=s.index)
            sessions.append(replace(
                s, train_ids=np.setdiff1d(s.train_ids, val), gallery_ids=np.setdiff1d(s.gallery_ids, val),
                val_ids=np.union1d(s.val_ids, val).astype(np.int64),
            ))
        return Stream(sessions, labels=self.labels, home_session=self.home_session)

    def val_ids(self, t: int, *, seen: bool = False) -> np.ndarray:
        """Session t's validation samples, or with `seen` those of sessions 0..t."""
        if not seen:
            return self.sessions[t].val_ids
        return np.concatenate([s.val_ids for s in self.sessions[: t + 1]]).astype(np.int64)

    def classes_seen(self, t: int) -> np.ndarray:
        return np.flatnonzero((self.home_array >= 0) & (self.home_array <= t)).astype(np.int64)

    def classes_trained(self, t: int) -> np.ndarray:
        """Classes with a training arrival in sessions 0..t: on blurry and general streams more than `classes_seen(t)`,
        since a class's samples can arrive before its home session."""
        if self._first_trained is None:
            first = np.full(len(self.home_array), len(self.sessions), dtype=np.int64)
            for index, session in enumerate(self.sessions):
                classes = np.unique(self.labels[session.train_ids])
                first[classes] = np.minimum(first[classes], index)
            self._first_trained = first
        return np.flatnonzero(self._first_trained <= t).astype(np.int64)

    def home_of(self, class_ids: np.ndarray) -> np.ndarray:
        return self.home_array[np.asarray(class_ids, dtype=np.int64)]

    # -- as a table --------------------------------------------------------------------------

    def to_frame(self) -> pd.DataFrame:
        """One row per (sample, role): a training arrival that is also a gallery item has two rows; a validation
        sample has one (`val`). A query row appears at the first session that evaluates it; `home_session` is the class's.
        """
        frames = []
        queried = np.zeros(len(self.labels), dtype=bool)
        for s in self.sessions:
            new_queries = s.query_ids[~queried[s.query_ids]]
            queried[new_queries] = True
            for role, ids in (("train", s.train_ids), ("gallery", s.gallery_ids), ("query", new_queries), ("val", s.val_ids)):
                classes = self.labels[ids].astype(np.int64)
                frames.append(
                    pd.DataFrame(
                        {"sample_id": ids.astype(np.int64), "class_id": classes,
                         "session": np.full(len(ids), s.index, dtype=np.int64), "role": role,
                         "home_session": self.home_array[classes]}
                    )
                )
        return pd.concat(frames, ignore_index=True)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, labels: np.ndarray | None = None, source: str = "stream") -> "Stream":
        """The inverse of `to_frame`; with `labels` (the data set's), every row's class is checked against it."""
        required = {"sample_id", "class_id", "session", "role", "home_session"}
        missing = required - set(frame.columns)
        if missing:
            raise _stream_file_error(f"{source}: missing columns {sorted(missing)}; a stream table has {sorted(required)}")
        bad_roles = sorted(set(frame["role"].unique()) - set(ROLES))
        if bad_roles:
            raise _stream_file_error(f"{source}: unknown roles {bad_roles}; allowed: {', '.join(ROLES)}")
        try:
            sample = frame["sample_id"].to_numpy(np.int64)
            klass = frame["class_id"].to_numpy(np.int64)
            session = frame["session"].to_numpy(np.int64)
            home = frame["home_session"].to_numpy(np.int64)
        except (TypeError, ValueError) as exc:
            raise _stream_file_error(f"{source}: sample_id, class_id, session and home_session must be integers ({exc})") from None
        role = pd.Categorical(frame["role"], categories=list(ROLES)).codes
        if len(frame) and min(sample.min(), klass.min(), session.min(), home.min()) < 0:
            raise _stream_file_error(f"{source}: negative sample, class or session ids")
        if labels is None:
            labels = np.full(int(sample.max()) + 1 if len(sample) else 0, -1, dtype=np.int64)
            labels[sample] = klass
        elif len(sample):
            if sample.max() >= len(labels):
                raise _stream_file_error(f"{source}: sample id {int(sample.max())} is not in the data set ({len(labels)} samples)")
            wrong = np.flatnonzero(labels[sample] != klass)
            if len(wrong):
                i = wrong[0]
                raise _stream_file_error(
                    f"{source}: sample {int(sample[i])} has class {int(labels[sample[i]])} in the data set, "
                    f"{int(klass[i])} in the stream ({len(wrong)} rows disagree): is this the stream of another data set?"
                )
        pairs = pd.DataFrame({"c": klass, "h": home}).drop_duplicates()
        if pairs["c"].duplicated().any():
            raise _stream_file_error(f"{source}: class {int(pairs['c'][pairs['c'].duplicated()].iloc[0])} has two home sessions")
        home_session = dict(zip(pairs["c"].tolist(), pairs["h"].tolist()))
        n_sessions = int(max(session.max(initial=-1), home.max(initial=-1))) + 1
        # One sort: grouped by role, then session, samples ascending within.
        order = np.lexsort((sample, session, role))
        keys = role[order].astype(np.int64) * (n_sessions + 1) + session[order]
        bounds = np.searchsorted(keys, np.arange(len(ROLES) * (n_sessions + 1) + 1))
        grouped = sample[order]

        def part(code: int, t: int) -> np.ndarray:
            k = code * (n_sessions + 1) + t
            return grouped[bounds[k] : bounds[k + 1]]

        is_query = role == ROLES.index("query")
        by_sample = np.argsort(sample[is_query], kind="stable")
        query_sample, query_session = sample[is_query][by_sample], session[is_query][by_sample]
        class_home = np.array(sorted(home_session.items()), dtype=np.int64).reshape(-1, 2)
        sessions = []
        for t in range(n_sessions):
            sessions.append(
                Session(
                    index=t, new_classes=class_home[class_home[:, 1] == t, 0], train_ids=part(ROLES.index("train"), t),
                    gallery_ids=part(ROLES.index("gallery"), t), query_ids=query_sample[query_session <= t],  # a query set only grows
                    val_ids=part(ROLES.index("val"), t),
                )
            )
        return cls(sessions, labels=labels, home_session=home_session)

    @classmethod
    def read_parquet(cls, path: str | Path, *, labels: np.ndarray | None = None) -> "Stream":
        path = Path(path)
        if not path.is_file():
            raise _stream_file_error(f"stream file {path} not found")
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
            raise _stream_file_error(f"cannot read the stream file {path}: {exc}") from None
        return cls.from_frame(frame, labels=labels, source=str(path))

    def summary(self) -> pd.DataFrame:
        """Per session: new classes, old and future classes present, training samples, off-home share."""
        rows = []
        for s in self.sessions:
            home = self.home_array[self.labels[s.train_ids]]
            present = np.unique(self.labels[s.train_ids])
            present_home = self.home_array[present]
            rows.append(
                {
                    "session": s.index,
                    "new_classes": len(s.new_classes),
                    "old_classes_present": int((present_home < s.index).sum()),
                    "future_classes_present": int((present_home > s.index).sum()),
                    "train_samples": len(s.train_ids),
                    "off_home_share": float((home != s.index).mean()) if len(home) else 0.0,
                    "queries": len(s.query_ids),
                }
            )
        return pd.DataFrame(rows)


class StreamParams(Params):
    class_order: list[int] | None = Field(None, description="explicit class order; default a seeded permutation")
    query_fraction: float | None = Field(
        None, gt=0, lt=1, description="share of each class held out as queries; default the data set's test split, else 0.25"
    )
    gallery_only_fraction: float = Field(0.0, ge=0, lt=1, description="share of each session's arrivals kept out of training")
    queries: Literal["seen", "all"] = "seen"


class StreamSetup:
    """A named way to cut a labelled data set into sessions."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]]
    # Whether a later session can bring more samples of a class an earlier session brought (False: only new
    # classes), for methods that depend on it; a setup that cannot promise otherwise says True.
    revisits_classes: ClassVar[bool] = True

    def __init__(self, params: Params, *, data_root: Path | None = None, base_dir: Path | None = None):
        self.params = params
        self.data_root = data_root  # where collections of samples resolve (explicit streams)
        self.base_dir = base_dir  # the scenario file's folder, where stream files resolve

    def build(self, label_set: LabelSet, seed: int) -> Stream:
        raise NotImplementedError


SETUPS: Registry[StreamSetup] = Registry("stream setup")


# -- helpers every setup uses ---------------------------------------------------------------


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


@dataclass(frozen=True)
class Pools:
    """Per stream class (in class order): its training pool and its held-out queries.

    `train_ids` is grouped by class, in a seeded random order within each class, so that
    "the first k of a class" is a random draw of k; `train_start[i]:train_start[i+1]` is class i.
    """

    classes: np.ndarray
    train_ids: np.ndarray
    train_start: np.ndarray
    query_ids: np.ndarray
    query_start: np.ndarray

    @property
    def train_counts(self) -> np.ndarray:
        return np.diff(self.train_start)

    def class_index(self) -> np.ndarray:
        """For each entry of train_ids, the position of its class in `classes`."""
        return np.repeat(np.arange(len(self.classes)), self.train_counts)

    def rank(self) -> np.ndarray:
        """For each entry of train_ids, its position within its class (0 = first drawn)."""
        return np.arange(len(self.train_ids)) - np.repeat(self.train_start[:-1], self.train_counts)

    def queries(self) -> dict[int, np.ndarray]:
        return {int(c): self.query_ids[self.query_start[i] : self.query_start[i + 1]] for i, c in enumerate(self.classes)}


def split_pools(params: StreamParams, label_set: LabelSet, classes: np.ndarray, seed: int, *, min_train: int = 1) -> Pools:
    """Hold out queries per class (never trained on nor indexed); shuffle the rest with the split generator."""
    rng = numpy_rng(seed, "split")
    labels = label_set.labels
    classes = np.asarray(classes, dtype=np.int64)
    position = np.full(label_set.num_classes, -1, dtype=np.int64)
    position[classes] = np.arange(len(classes))
    ids = np.flatnonzero(position[labels] >= 0)
    cls_pos = position[labels[ids]]
    shuffled = rng.permutation(len(ids))
    order = shuffled[np.argsort(cls_pos[shuffled], kind="stable")]  # grouped by class, random within
    ids, cls_pos = ids[order], cls_pos[order]
    counts = np.bincount(cls_pos, minlength=len(classes))
    start = np.concatenate([[0], np.cumsum(counts)])
    rank = np.arange(len(ids)) - start[cls_pos]
    use_official = params.query_fraction is None and label_set.test_mask is not None
    if use_official:
        is_query = label_set.test_mask[ids]
    else:
        fraction = params.query_fraction if params.query_fraction is not None else 0.25
        n_query = np.clip(np.round(counts * fraction).astype(np.int64), 1, np.maximum(counts - 1, 1))
        is_query = rank < n_query[cls_pos]
    train_counts = np.bincount(cls_pos[~is_query], minlength=len(classes))
    query_counts = np.bincount(cls_pos[is_query], minlength=len(classes))
    short = np.flatnonzero((train_counts < min_train) | (query_counts == 0))
    if len(short):
        i = short[0]
        raise ScenarioError(
            f"class {int(classes[i])} ({label_set.class_names[classes[i]]}) has {int(counts[i])} samples: too few to hold out "
            f"queries and still train on {min_train}",
            key_path="stream.query_fraction",
        )
    query_ids = ids[is_query]
    query_start = np.concatenate([[0], np.cumsum(query_counts)])
    # Queries sorted within class; training pools keep their random order.
    query_ids = query_ids[np.argsort(cls_pos[is_query] * len(labels) + query_ids)]
    return Pools(
        classes=classes, train_ids=ids[~is_query], train_start=np.concatenate([[0], np.cumsum(train_counts)]),
        query_ids=query_ids, query_start=query_start,
    )


def group_by_session(ids: np.ndarray, session: np.ndarray, sessions: int) -> list[np.ndarray]:
    """Split `ids` by their session number; entries with session < 0 arrive nowhere."""
    keep = session >= 0
    ids, session = ids[keep], session[keep]
    order = np.argsort(session, kind="stable")
    bounds = np.searchsorted(session[order], np.arange(sessions + 1))
    return [ids[order[bounds[t] : bounds[t + 1]]] for t in range(sessions)]


def session_cuts(*, sessions: int, initial_classes: int, classes_per_session: int) -> np.ndarray:
    """Class-order positions where each session's new classes start (and the end)."""
    return np.array([0] + [initial_classes + k * classes_per_session for k in range(sessions)], dtype=np.int64)


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
    stream_classes = list(home)
    all_queries = np.concatenate([queries[c] for c in stream_classes]) if home else np.empty(0, np.int64)
    query_home = np.concatenate([np.full(len(queries[c]), home[c]) for c in stream_classes]) if home else np.empty(0, np.int64)
    order = np.argsort(all_queries, kind="stable")
    all_queries, query_home = all_queries[order].astype(np.int64), query_home[order]
    sessions = []
    for t, (ids, classes) in enumerate(zip(arrivals, new_classes)):
        ids = np.sort(np.asarray(ids, dtype=np.int64))
        train_ids = ids
        if params.gallery_only_fraction > 0 and len(ids):
            keep = rng.random(len(ids)) >= params.gallery_only_fraction
            train_ids = ids[keep]
        query_ids = all_queries if params.queries == "all" else all_queries[query_home <= t]
        sessions.append(
            Session(index=t, new_classes=np.sort(np.asarray(classes, dtype=np.int64)), train_ids=train_ids, gallery_ids=ids, query_ids=query_ids)
        )
    return Stream(sessions, labels=label_set.labels, home_session=home)


# Registration happens on import.
from cvstream.sessions import setups  # noqa: E402,F401
