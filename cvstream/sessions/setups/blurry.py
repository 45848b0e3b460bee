"""`blurry` (Blurry-M, Rainbow Memory) and `iblurry` (i-Blurry-N-M, Si-Blurry): classes leak out of their home session.

A blurry class keeps `1 - M` of its training samples at home; the other `M` are dealt
round-robin over all *other* sessions, past and future, from a seeded offset, so every
other session gets an equal share (within one sample) and future classes appear early.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from cvstream.errors import ScenarioError
from cvstream.sessions.datasets import LabelSet
from cvstream.sessions.rng import numpy_rng
from cvstream.sessions.setups.disjoint import Disjoint, DisjointParams
from cvstream.sessions.streams import SETUPS, Pools, Stream, assemble, class_order, group_by_session, split_pools


def spread_off_home(pools: Pools, *, home: np.ndarray, off_counts: np.ndarray, sessions: int, seed: int) -> np.ndarray:
    """Session of every training sample: the first `off_counts[i]` of class i go round-robin to the other sessions."""
    cls = pools.class_index()
    rank = pools.rank()
    home_of_sample = home[cls]
    if sessions == 1:
        return home_of_sample
    shift = numpy_rng(seed, "leakage").integers(sessions - 1, size=len(pools.classes))
    away = (home_of_sample + 1 + (rank + shift[cls]) % (sessions - 1)) % sessions
    return np.where(rank < off_counts[cls], away, home_of_sample)


class BlurryParams(DisjointParams):
    blurry_ratio: float = Field(0.1, ge=0, lt=1, description="M: share of each class's training samples that leave its home session")


@SETUPS.register("blurry")
class Blurry(Disjoint):
    """Blurry-M: every class is a major class at home and a minor class in every other session."""

    Params = BlurryParams
    revisits_classes = True

    def blurry_mask(self, n_classes: int, seed: int) -> np.ndarray:
        return np.ones(n_classes, dtype=bool)

    def build(self, label_set: LabelSet, seed: int) -> Stream:
        p = self.params
        order = class_order(p, label_set, self.classes_needed(), seed)
        pools = split_pools(p, label_set, order, seed)
        home = self.home_sessions(len(order), seed)
        off_counts = np.round(p.blurry_ratio * pools.train_counts).astype(np.int64)
        off_counts = np.minimum(off_counts, pools.train_counts - 1)  # a class always keeps one sample at home
        off_counts[~self.blurry_mask(len(order), seed)] = 0
        session = spread_off_home(pools, home=home, off_counts=off_counts, sessions=p.sessions, seed=seed)
        arrivals = group_by_session(pools.train_ids, session, p.sessions)
        new_classes = [order[home == t] for t in range(p.sessions)]
        return assemble(p, label_set, arrivals=arrivals, new_classes=new_classes, queries=pools.queries(), seed=seed)


class IBlurryParams(BlurryParams):
    disjoint_class_ratio: float = Field(0.5, ge=0, le=1, description="N: share of classes that never leave their home session")
    stochastic_boundaries: bool = Field(
        False, description="Si-Blurry: new classes per session cut at seeded random points instead of fixed counts"
    )


@SETUPS.register("iblurry")
class IBlurry(Blurry):
    """i-Blurry-N-M: a seeded share N of classes is disjoint, the rest blurry-M; optionally Si-Blurry boundaries."""

    Params = IBlurryParams

    def blurry_mask(self, n_classes: int, seed: int) -> np.ndarray:
        n_disjoint = int(round(self.params.disjoint_class_ratio * n_classes))
        mask = np.ones(n_classes, dtype=bool)
        mask[numpy_rng(seed, "disjoint_classes").choice(n_classes, n_disjoint, replace=False)] = False
        return mask

    def home_sessions(self, n_classes: int, seed: int) -> np.ndarray:
        p = self.params
        if not p.stochastic_boundaries:
            return super().home_sessions(n_classes, seed)
        if n_classes < p.sessions:
            raise ScenarioError(
                f"stochastic boundaries need at least one class per session: {n_classes} classes for {p.sessions} sessions",
                key_path="stream.sessions",
            )
        # T-1 distinct cut points in 1..C-1: every session gets at least one new class, counts vary.
        cuts = np.sort(numpy_rng(seed, "boundaries").choice(np.arange(1, n_classes), p.sessions - 1, replace=False))
        return np.searchsorted(cuts, np.arange(n_classes), side="right")
