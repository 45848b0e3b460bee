"""`disjoint`: each class's training samples all arrive in its home session."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from cvstream.sessions.datasets import LabelSet
from cvstream.sessions.streams import SETUPS, Stream, StreamParams, StreamSetup, assemble, class_order, group_by_session, session_cuts, split_pools


class DisjointParams(StreamParams):
    sessions: int = Field(5, ge=1, le=100_000)
    initial_classes: int = Field(20, ge=1, description="new classes in session 0")
    classes_per_session: int = Field(20, ge=1, description="new classes in each later session")


@SETUPS.register("disjoint")
class Disjoint(StreamSetup):
    """Each class's training samples all arrive in its home session."""

    Params = DisjointParams
    revisits_classes = False

    def classes_needed(self) -> int:
        p = self.params
        return p.initial_classes + (p.sessions - 1) * p.classes_per_session

    def home_sessions(self, n_classes: int, seed: int) -> np.ndarray:
        """Home session of each class position in the class order."""
        p = self.params
        cuts = session_cuts(sessions=p.sessions, initial_classes=p.initial_classes, classes_per_session=p.classes_per_session)
        return np.searchsorted(cuts, np.arange(n_classes), side="right") - 1

    def build(self, label_set: LabelSet, seed: int) -> Stream:
        p = self.params
        order = class_order(p, label_set, self.classes_needed(), seed)
        pools = split_pools(p, label_set, order, seed)
        home = self.home_sessions(len(order), seed)
        arrivals = group_by_session(pools.train_ids, home[pools.class_index()], p.sessions)
        new_classes = [order[home == t] for t in range(p.sessions)]
        return assemble(p, label_set, arrivals=arrivals, new_classes=new_classes, queries=pools.queries(), seed=seed)
