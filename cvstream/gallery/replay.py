"""The replay buffer: a bounded, per-class balanced store of past samples and their stored embeddings."""

from __future__ import annotations

import numpy as np


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


SELECTIONS = {
    "herding": lambda vectors, m, rng: herding(vectors, m),
    "random": lambda vectors, m, rng: rng.permutation(len(vectors))[: min(m, len(vectors))].astype(np.int64),
}


class ReplayBuffer:
    """Per class: sample ids in priority order and their stored embeddings.

    Rebalanced every session to `size // classes_seen` exemplars per class; the order is a
    priority, so shrinking a class keeps its best exemplars.
    """

    def __init__(self, size: int, selection: str = "herding"):
        if selection not in SELECTIONS:
            raise ValueError(f"unknown replay selection {selection!r}")
        self.size = size
        self.selection = selection
        self._ids: dict[int, np.ndarray] = {}
        self._vectors: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._ids.values())

    def sample_ids(self) -> np.ndarray:
        if not self._ids:
            return np.empty(0, dtype=np.int64)
        return np.concatenate([self._ids[c] for c in sorted(self._ids)])

    def per_class(self) -> dict[int, int]:
        return {c: len(v) for c, v in sorted(self._ids.items())}

    def update(self, arrivals: dict[int, tuple[np.ndarray, np.ndarray]], *, classes_seen: int, rng: np.random.Generator) -> None:
        """Merge this session's arrivals (class -> (sample ids, vectors)) and rebalance every class."""
        if self.size == 0:
            return
        quota = max(self.size // max(classes_seen, 1), 0)
        for c in sorted(set(self._ids) | set(arrivals)):
            ids = self._ids.get(c, np.empty(0, np.int64))
            vecs = self._vectors.get(c)
            if c in arrivals:
                new_ids, new_vecs = arrivals[c]
                ids = np.concatenate([ids, np.asarray(new_ids, np.int64)])
                vecs = new_vecs if vecs is None else np.vstack([vecs, new_vecs])
                keep = SELECTIONS[self.selection](vecs, quota, rng)
            else:
                keep = np.arange(min(quota, len(ids)))
            if len(keep) == 0:
                self._ids.pop(c, None)
                self._vectors.pop(c, None)
                continue
            self._ids[c] = ids[keep]
            self._vectors[c] = np.ascontiguousarray(vecs[keep], dtype=np.float32)
