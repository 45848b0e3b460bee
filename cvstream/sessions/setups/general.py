"""`general` (CVS general-M): after session 0, a share M of each session comes from past classes only.

Each class keeps `1 - hold_back` of its training samples for its home session and holds
the rest back. A later session's old quota is shared equally among all earlier classes
(largest remainder, the extra units to a seeded draw of classes), each drawing without
replacement from its own held-back samples, as CVS's collection files do; a class that runs
dry frees its share for the others. Future classes never leak; no sample is used twice;
held-back samples nobody draws never arrive.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from cvstream.errors import ScenarioError
from cvstream.sessions.datasets import LabelSet
from cvstream.sessions.rng import numpy_rng
from cvstream.sessions.setups.disjoint import Disjoint, DisjointParams
from cvstream.sessions.streams import SETUPS, Stream, assemble, class_order, equal_shares, group_by_session, split_pools


class GeneralParams(DisjointParams):
    old_ratio: float = Field(0.1, ge=0, lt=1, description="M: share of each later session's samples that come from past classes")
    hold_back: float | None = Field(
        None, ge=0, lt=1, description="share of each class kept from its home session for later ones; default 2M (CVS: 360 of 450 at M=0.1)"
    )

    @model_validator(mode="after")
    def _enough_held_back(self):
        if self.hold_back is not None and self.old_ratio > 0 and self.hold_back == 0 and self.sessions > 1:
            raise ValueError("hold_back 0 leaves nothing for later sessions to draw; raise it or set old_ratio 0")
        return self

    @property
    def held_share(self) -> float:
        return self.hold_back if self.hold_back is not None else min(2 * self.old_ratio, 0.9)


@SETUPS.register("general")
class General(Disjoint):
    """CVS general-M: new classes at home, plus about M of each later session drawn from past classes only."""

    Params = GeneralParams
    revisits_classes = True

    def build(self, label_set: LabelSet, seed: int) -> Stream:
        p = self.params
        order = class_order(p, label_set, self.classes_needed(), seed)
        pools = split_pools(p, label_set, order, seed)
        home = self.home_sessions(len(order), seed)
        counts = pools.train_counts
        at_home = np.maximum(counts - np.round(p.held_share * counts).astype(np.int64), 1)
        cls = pools.class_index()
        session = np.where(pools.rank() < at_home[cls], home[cls], -1)
        # Each class's held-back samples, in a seeded order: a session takes the next ones of each earlier class.
        rng = numpy_rng(seed, "leakage")
        held = [rng.permutation(np.flatnonzero((session < 0) & (cls == c))) for c in range(len(order))]
        drawn = np.zeros(len(order), dtype=np.int64)
        ratio = p.old_ratio / (1 - p.old_ratio)  # old = M / (1 - M) * new gives a share M of the session
        for t in range(1, p.sessions):
            wanted = int(round(ratio * int(at_home[home == t].sum())))
            if wanted == 0:
                continue
            earlier = np.flatnonzero(home < t)
            left = np.array([len(held[c]) for c in earlier]) - drawn[earlier]
            if wanted > left.sum():
                raise ScenarioError(
                    f"session {t} needs {wanted} samples of past classes, only {int(left.sum())} are held back: "
                    f"raise stream.hold_back (now {p.held_share:g}) or lower old_ratio",
                    key_path="stream.old_ratio",
                )
            # An equal share per earlier class; the remainder goes to a seeded draw of classes, not always the first.
            shares = equal_shares(left, wanted, priority=rng.permutation(len(earlier)))
            for c, n in zip(earlier, shares):
                session[held[c][drawn[c] : drawn[c] + n]] = t
                drawn[c] += n
        arrivals = group_by_session(pools.train_ids, session, p.sessions)
        new_classes = [order[home == t] for t in range(p.sessions)]
        return assemble(p, label_set, arrivals=arrivals, new_classes=new_classes, queries=pools.queries(), seed=seed)
