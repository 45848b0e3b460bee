"""joint: L_c on every training sample seen so far. Paired with full backfill it is the upper bound (CVS `--jt --reindex`)."""

from __future__ import annotations

from cvstream.models.methods.base import METHODS
from cvstream.models.methods.finetune import Finetune


@METHODS.register("joint")
class Joint(Finetune):
    needs = frozenset({"seen_data"})

    def training_ids(self, *, session_ids, replay_ids, seen_ids=None):
        return session_ids if seen_ids is None else seen_ids
