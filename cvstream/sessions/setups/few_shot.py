"""`few-shot` (FSCIL): a base session with all samples of its classes, then N-way K-shot sessions."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from cvstream.errors import ScenarioError
from cvstream.sessions.datasets import LabelSet
from cvstream.sessions.streams import SETUPS, Stream, StreamParams, StreamSetup, assemble, class_order, group_by_session, session_cuts, split_pools


class FewShotParams(StreamParams):
    sessions: int = Field(9, ge=1, le=100_000, description="the base session plus the few-shot ones")
    initial_classes: int = Field(60, ge=1, description="classes of the base session, with all their training samples")
    ways: int = Field(5, ge=1, description="new classes per few-shot session")
    shots: int = Field(5, ge=1, description="training samples per new class in a few-shot session")


@SETUPS.register("few-shot")
class FewShot(StreamSetup):
    """Base session with every training sample; then `ways` new classes with `shots` samples each."""

    Params = FewShotParams
    revisits_classes = False

    def classes_needed(self) -> int:
        p = self.params
        return p.initial_classes + (p.sessions - 1) * p.ways

    def build(self, label_set: LabelSet, seed: int) -> Stream:
        p = self.params
        order = class_order(p, label_set, self.classes_needed(), seed)
        pools = split_pools(p, label_set, order, seed)
        cuts = session_cuts(sessions=p.sessions, initial_classes=p.initial_classes, classes_per_session=p.ways)
        home = np.searchsorted(cuts, np.arange(len(order)), side="right") - 1
        few = home > 0
        short = np.flatnonzero(few & (pools.train_counts < p.shots))
        if len(short):
            i = short[0]
            raise ScenarioError(
                f"{p.shots} shots cannot be met: class {int(order[i])} ({label_set.class_names[order[i]]}) has only "
                f"{int(pools.train_counts[i])} training samples after the queries are held out",
                key_path="stream.shots",
            )
        cls = pools.class_index()
        # Pools are shuffled within a class, so the first `shots` are a seeded random draw.
        session = np.where(~few[cls] | (pools.rank() < p.shots), home[cls], -1)
        arrivals = group_by_session(pools.train_ids, session, p.sessions)
        new_classes = [order[home == t] for t in range(p.sessions)]
        return assemble(p, label_set, arrivals=arrivals, new_classes=new_classes, queries=pools.queries(), seed=seed)
