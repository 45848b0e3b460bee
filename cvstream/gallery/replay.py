"""The replay buffer: a bounded store of past samples and their stored embeddings.

Selections: `herding` (iCaRL) and `random` keep `size // classes_seen` exemplars per
class; `class-balanced` spends the whole budget, per-class counts differing by at most
one; `reservoir` keeps a uniform sample of every training arrival so far (Vitter's
algorithm R), so class counts follow the stream, not a quota.
"""

from __future__ import annotations

import numpy as np

from cvstream.sessions.streams import equal_shares


def herding(vectors: np.ndarray, m: int) -> np.ndarray:
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


def _random(vectors: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(len(vectors))[: min(m, len(vectors))].astype(np.int64)


# Per-class selections: (vectors of one class, how many, rng) -> indices in priority order.
SELECTIONS = {
    "herding": lambda vectors, m, rng: herding(vectors, m),
    "random": _random,
    "class-balanced": _random,
}
ALL_SELECTIONS = (*SELECTIONS, "reservoir")


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
        if selection not in ALL_SELECTIONS:
            raise ValueError(f"unknown replay selection {selection!r}")
        self.size = size
        self.selection = selection
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
        if self.selection == "reservoir":
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
        if self.selection == "class-balanced":
            quotas = balanced_quotas({c: len(ids) for c, (ids, _, _) in merged.items()}, self.size)
        else:
            quota = max(self.size // max(classes_seen, 1), 0)
            quotas = {c: quota for c in merged}
        for c, (ids, vecs, select) in merged.items():
            keep = SELECTIONS[self.selection](vecs, quotas[c], rng) if select else np.arange(min(quotas[c], len(ids)))
            self._store(c, ids[keep], vecs[keep])

    def _reservoir(self, arrivals: dict[int, tuple[np.ndarray, np.ndarray]], rng: np.random.Generator) -> None:
        slots_ids = [(c, i) for c in sorted(self._ids) for i in range(len(self._ids[c]))]
        slot_sample = [int(self._ids[c][i]) for c, i in slots_ids]
        slot_class = [c for c, _ in slots_ids]
        slot_vec = [self._vectors[c][i] for c, i in slots_ids]
        incoming = [(c, int(s), v) for c in sorted(arrivals) for s, v in zip(*arrivals[c])]
        for k in rng.permutation(len(incoming)):  # arrivals come in a random order within the session
            c, sample, vector = incoming[k]
            self._arrivals_seen += 1
            if len(slot_sample) < self.size:
                slot_sample.append(sample), slot_class.append(c), slot_vec.append(vector)
                continue
            j = int(rng.integers(0, self._arrivals_seen))
            if j < self.size:
                slot_sample[j], slot_class[j], slot_vec[j] = sample, c, vector
        classes = np.asarray(slot_class, dtype=np.int64)
        samples = np.asarray(slot_sample, dtype=np.int64)
        self._ids.clear()
        self._vectors.clear()
        for c in np.unique(classes):
            members = np.flatnonzero(classes == c)
            self._store(int(c), samples[members], np.stack([slot_vec[i] for i in members]))

    def _store(self, c: int, ids: np.ndarray, vecs: np.ndarray) -> None:
        if len(ids) == 0:
            self._ids.pop(c, None)
            self._vectors.pop(c, None)
            return
        self._ids[c] = ids
        self._vectors[c] = np.ascontiguousarray(vecs, dtype=np.float32)
