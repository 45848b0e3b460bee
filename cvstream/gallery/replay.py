"""The replay buffer: a bounded store of past samples and their stored embeddings.

Selections (`REPLAY_SELECTIONS`, a registry): `herding` (iCaRL) and `random` keep
`size // classes_seen` exemplars per class; `class-balanced` spends the whole budget,
per-class counts differing by at most one; `reservoir` keeps a uniform sample of every
training arrival so far (Vitter's algorithm R), so class counts follow the stream, not a quota.

A selection is a per-class selector `(vectors of one class, how many, rng) -> indices in
priority order`, with its `quotas`: "equal" (`size // classes_seen` per class) or "balanced"
(the whole budget, water-filled). A "stream" selection (reservoir) is instead
`(held, incoming, *, size, seen, rng) -> (held, seen)` over (class, sample id, vector) slots.
"""

from __future__ import annotations

import numpy as np

from cvstream.registry import Registry
from cvstream.sessions.streams import equal_shares

# `embeds`: the selection reads the exemplars' embeddings by the current generation, so the engine re-embeds
# the buffer before each update (herding, as the CVS code does); other selections keep their stored vectors.
REPLAY_SELECTIONS: Registry = Registry("replay selection", attributes={"quotas": "equal", "embeds": False})


@REPLAY_SELECTIONS.register("herding", embeds=True)
def herding(vectors: np.ndarray, m: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """iCaRL herding: indices, in selection order, whose running mean best tracks the class mean."""
    n = len(vectors)
    m = min(m, n)
    if m == 0:
        return np.empty(0, dtype=np.int64)
    x = vectors.astype(np.float64)
    mu = x.mean(axis=0)
    chosen: list[int] = []
    running = np.zeros_like(mu)
    available = np.ones(n, dtype=bool)
    for k in range(1, m + 1):
        candidates = (running + x) / k
        distance = ((mu - candidates) ** 2).sum(axis=1)
        distance[~available] = np.inf
        pick = int(np.argmin(distance))
        chosen.append(pick)
        available[pick] = False
        running += x[pick]
    return np.asarray(chosen, dtype=np.int64)


@REPLAY_SELECTIONS.register("random")
def random_exemplars(vectors: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(len(vectors))[: min(m, len(vectors))].astype(np.int64)


@REPLAY_SELECTIONS.register("class-balanced", quotas="balanced")
def balanced_exemplars(vectors: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    return random_exemplars(vectors, m, rng)


@REPLAY_SELECTIONS.register("reservoir", quotas="stream")
def reservoir(held: list[tuple], incoming: list[tuple], *, size: int, seen: int, rng: np.random.Generator) -> tuple[list[tuple], int]:
    """Vitter's algorithm R over this session's arrivals, in a random order: `seen` counts every arrival offered so far."""
    held = list(held)
    for k in rng.permutation(len(incoming)):  # arrivals come in a random order within the session
        seen += 1
        if len(held) < size:
            held.append(incoming[k])
            continue
        j = int(rng.integers(0, seen))
        if j < size:
            held[j] = incoming[k]
    return held, seen


def balanced_quotas(available: dict[int, int], size: int) -> dict[int, int]:
    """Split `size` over classes as evenly as their sample counts allow (water-filling), every slot used if possible."""
    classes = sorted(available)
    shares = equal_shares(np.array([available[c] for c in classes], dtype=np.int64), size)
    return {c: int(n) for c, n in zip(classes, shares)}


class ReplayBuffer:
    """Per class: sample ids in priority order and their stored embeddings.

    Rebalanced every session; the order within a class is a priority, so shrinking a
    class keeps its best exemplars.
    """

    def __init__(self, size: int, selection: str = "herding"):
        if selection not in REPLAY_SELECTIONS:
            raise ValueError(REPLAY_SELECTIONS.unknown_message(selection))
        self.size = size
        self.selection = selection
        self._select = REPLAY_SELECTIONS.get(selection)
        self._ids: dict[int, np.ndarray] = {}
        self._vectors: dict[int, np.ndarray] = {}
        self._arrivals_seen = 0  # reservoir: training arrivals offered so far

    def __len__(self) -> int:
        return sum(len(v) for v in self._ids.values())

    def sample_ids(self) -> np.ndarray:
        if not self._ids:
            return np.empty(0, dtype=np.int64)
        return np.concatenate([self._ids[c] for c in sorted(self._ids)])

    def class_samples(self) -> dict[int, np.ndarray]:
        """Class -> its exemplars' sample ids, in the buffer's order."""
        return {c: v.copy() for c, v in sorted(self._ids.items())}

    def per_class(self) -> dict[int, int]:
        return {c: len(v) for c, v in sorted(self._ids.items())}

    def update(
        self, arrivals: dict[int, tuple[np.ndarray, np.ndarray]], *, classes_seen: int, rng: np.random.Generator,
        current: dict[int, np.ndarray] | None = None,
    ) -> None:
        """Merge this session's arrivals (class -> (sample ids, vectors)) and rebalance.

        `current` (class -> vectors of its exemplars, in the buffer's order) replaces the stored
        embeddings by the current generation's; every class is then selected again on them, as
        the CVS code herds over the session's arrivals plus the old exemplars, all re-embedded.
        Without it, a class that received nothing keeps its first exemplars (iCaRL's reduction).
        """
        if self.size == 0:
            return
        if current is not None:
            for c, vecs in current.items():
                if len(vecs) != len(self._ids.get(c, ())):
                    raise ValueError(f"class {c}: {len(vecs)} current vectors for {len(self._ids.get(c, ()))} exemplars")
                self._vectors[c] = np.ascontiguousarray(vecs, dtype=np.float32)
        if self._select.quotas == "stream":
            self._reservoir(arrivals, rng)
            return
        merged = {}
        for c in sorted(set(self._ids) | set(arrivals)):
            ids = self._ids.get(c, np.empty(0, np.int64))
            vecs = self._vectors.get(c)
            select = c in arrivals or current is not None
            if c in arrivals:
                new_ids, new_vecs = arrivals[c]
                ids = np.concatenate([ids, np.asarray(new_ids, np.int64)])
                vecs = new_vecs if vecs is None else np.vstack([vecs, new_vecs])
            merged[c] = (ids, vecs, select)
        if self._select.quotas == "balanced":
            quotas = balanced_quotas({c: len(ids) for c, (ids, _, _) in merged.items()}, self.size)
        else:
            quota = self.size // max(classes_seen, 1)
            quotas = {c: quota for c in merged} if quota else self._one_each(merged, arrivals, rng)
        for c, (ids, vecs, select) in merged.items():
            keep = self._select(vecs, quotas[c], rng) if select else np.arange(min(quotas[c], len(ids)))
            self._store(c, ids[keep], vecs[keep])

    def _reservoir(self, arrivals: dict[int, tuple[np.ndarray, np.ndarray]], rng: np.random.Generator) -> None:
        held = [(c, int(s), v) for c in sorted(self._ids) for s, v in zip(self._ids[c], self._vectors[c])]
        incoming = [(c, int(s), v) for c in sorted(arrivals) for s, v in zip(*arrivals[c])]
        held, self._arrivals_seen = self._select(held, incoming, size=self.size, seen=self._arrivals_seen, rng=rng)
        classes = np.asarray([c for c, _, _ in held], dtype=np.int64)
        samples = np.asarray([s for _, s, _ in held], dtype=np.int64)
        self._ids.clear()
        self._vectors.clear()
        for c in np.unique(classes):
            members = np.flatnonzero(classes == c)
            self._store(int(c), samples[members], np.stack([held[i][2] for i in members]))

    def state(self) -> dict[str, np.ndarray]:
        """The buffer as arrays, for a checkpoint: every exemplar's class, sample id and stored vector, in the
        buffer's order, and the arrivals a reservoir has seen."""
        classes = sorted(self._ids)
        return {
            "class_ids": np.concatenate([np.full(len(self._ids[c]), c, np.int64) for c in classes]) if classes else np.empty(0, np.int64),
            "sample_ids": self.sample_ids(),
            "vectors": np.vstack([self._vectors[c] for c in classes]) if classes else np.empty((0, 0), np.float32),
            "arrivals_seen": np.array(self._arrivals_seen, dtype=np.int64),
        }

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Take the exemplars `state()` gave (a KeyError or ValueError if they do not fit together)."""
        classes, samples = np.asarray(arrays["class_ids"], np.int64), np.asarray(arrays["sample_ids"], np.int64)
        vectors = np.asarray(arrays["vectors"], np.float32)
        if not len(classes) == len(samples) == (len(vectors) if len(classes) else 0):
            raise ValueError(f"replay: {len(classes)} classes, {len(samples)} sample ids and {len(vectors)} vectors")
        self._ids.clear()
        self._vectors.clear()
        for c in np.unique(classes):
            members = classes == c
            self._store(int(c), samples[members], vectors[members])
        self._arrivals_seen = int(arrays["arrivals_seen"])

    def _one_each(self, merged: dict, arrivals: dict, rng: np.random.Generator) -> dict[int, int]:
        """More classes seen than slots (size // classes_seen is 0): one exemplar for as many classes as fit, this
        session's classes first, the others drawn at random, rather than an empty buffer."""
        rest = [c for c in merged if c not in arrivals]
        order = [c for c in merged if c in arrivals] + [rest[i] for i in rng.permutation(len(rest))]
        kept = set(order[: self.size])
        return {c: int(c in kept) for c in merged}

    def _store(self, c: int, ids: np.ndarray, vecs: np.ndarray) -> None:
        if len(ids) == 0:
            self._ids.pop(c, None)
            self._vectors.pop(c, None)
            return
        self._ids[c] = ids
        self._vectors[c] = np.ascontiguousarray(vecs, dtype=np.float32)
