"""l2: L_c + lambda ||f_t(x) - f_{t-1}(x)||, lambda = 10 (MixBCT repo: the distance, not squared);
`l2-weakened`: lambda max(0, ||f_t(x) - f_{t-1}(x)|| - 0.2)."""

from __future__ import annotations

from pydantic import Field

from cvstream.models.losses import embedding_distance
from cvstream.models.methods.base import METHODS, Method, ReplayParams


class L2Params(ReplayParams):
    weight: float = Field(10.0, ge=0, description="lambda, the weight of the distance term")
    hinge: float = Field(0.0, ge=0, lt=2, description="distance below which the term is zero (0: plain l2)")


class WeakenedL2Params(L2Params):
    hinge: float = Field(0.2, ge=0, lt=2, description="distance below which the term is zero")


@METHODS.register("l2")
class L2(Method):
    Params = L2Params
    needs = frozenset({"previous_model", "replay"})
    loss_terms = frozenset({"ce", "l2"})

    def loss(self, model, batch, context):
        p = self.params
        terms = {"ce": self.classification_loss(model, batch.embeddings, batch.rows)}
        if context.previous_embed is not None and p.weight > 0:
            old = context.previous_embed(batch.inputs)
            terms["l2"] = p.weight * embedding_distance(context.old_view(batch.embeddings), old, p.hinge)
        return terms


@METHODS.register("l2-weakened")
class WeakenedL2(L2):
    Params = WeakenedL2Params
