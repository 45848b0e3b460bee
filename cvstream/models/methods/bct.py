"""bct (Shen et al., CVPR 2020): L_c + lambda CE(W_{t-1} frozen, f_t(x)), lambda = 1.

The old classifier has no rows for classes it never saw; with `synthesize_rows` (the
paper's choice for new classes) each such row is the mean old embedding of the class's
training samples of this session.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from cvstream.errors import ScenarioError
from cvstream.models.losses import old_classifier_ce
from cvstream.models.methods.base import METHODS, Method, ReplayParams

# Setups whose sessions after the first bring only new classes.
_ONLY_NEW_CLASSES = {"disjoint", "few-shot"}


class BCTParams(ReplayParams):
    weight: float = Field(1.0, ge=0, description="lambda, the weight of the influence loss")
    synthesize_rows: bool = Field(True, description="old-classifier rows for unseen classes from mean old embeddings")


@METHODS.register("bct")
class BCT(Method):
    Params = BCTParams
    needs = frozenset({"previous_model", "previous_embeddings", "replay"})

    def __init__(self, params: BCTParams):
        super().__init__(params)
        if not params.synthesize_rows:
            self.needs = self.needs - {"previous_embeddings"}
        self._old_weight: torch.Tensor | None = None
        self._valid: torch.Tensor | None = None

    @classmethod
    def check(cls, scenario) -> None:
        p = scenario.method.params
        no_replay = not p.replay or scenario.replay.size == 0
        if not p.synthesize_rows and no_replay and scenario.stream.name in _ONLY_NEW_CLASSES:
            raise ScenarioError(
                f"bct without synthesised rows and without replay on a {scenario.stream.name!r} stream never sees a class "
                "the old classifier knows, so its influence loss is always empty; set method.synthesize_rows: true "
                "or give it a replay buffer (method.replay: true, replay.size > 0)",
                source=scenario.source,
                key_path="method.synthesize_rows",
            )

    def begin_session(self, model, context):
        self._old_weight = self._valid = None
        if context.previous_weight is None:
            return
        weight = context.previous_weight.clone()
        valid = context.previous_known.clone()
        if context.previous_embeddings is not None:
            rows = context.training_rows
            sums = torch.zeros_like(weight).index_add_(0, rows, context.previous_embeddings)
            counts = torch.bincount(rows, minlength=len(weight))
            synthesized = ~valid & (counts > 0)
            weight[synthesized] = F.normalize(sums[synthesized], dim=1)
            valid = valid | synthesized
        self._old_weight, self._valid = weight, valid

    def loss(self, model, batch, context):
        p = self.params
        terms = {"ce": self.classification_loss(model, batch.embeddings, batch.rows)}
        if self._old_weight is not None and p.weight > 0:
            keep = self._valid[batch.rows]
            if bool(keep.any()):
                # Old-classifier index of each valid row: the classifier is only its valid rows.
                index = torch.cumsum(self._valid.long(), 0) - 1
                influence = old_classifier_ce(
                    batch.embeddings[keep], self._old_weight[self._valid], index[batch.rows[keep]], p.temperature
                )
            else:
                influence = batch.embeddings.sum() * 0.0
            terms["influence"] = p.weight * influence
            batch.covered["influence"] = keep
        return terms
