"""cvs (Wan et al., CVPR 2022): L_c + alpha L_m + beta L_d, with herding replay."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cvstream.models.losses import class_mean_loss, hardest_negative_triplet
from cvstream.models.methods.base import METHODS, Method, MethodParams


class CVSParams(MethodParams):
    alpha: float = Field(10.0, ge=0, description="weight of the neighbour-session triplet loss L_m")
    beta: float = Field(1.0, ge=0, description="weight of the inter-session class-mean loss L_d")
    margin: float = Field(0.1, ge=0, description="triplet margin of L_m")
    class_mean_reduction: Literal["covered", "batch"] = Field(
        "covered", description="L_d averaged over the samples it covers (the CVS code), or summed over them and divided by the batch"
    )


@METHODS.register("cvs")
class CVS(Method):
    Params = CVSParams
    needs = frozenset({"previous_model", "replay", "class_means"})
    loss_terms = frozenset({"ce", "triplet", "class_mean"})

    def loss(self, model, batch, context):
        p = self.params
        terms = {"ce": self.classification_loss(model, batch.embeddings, batch.rows)}
        if context.previous_embed is not None and p.alpha > 0:
            old = context.previous_embed(batch.inputs)
            terms["triplet"] = p.alpha * hardest_negative_triplet(context.old_view(batch.embeddings), old, old, batch.class_ids, p.margin)
            batch.covered["triplet"] = (batch.class_ids[:, None] != batch.class_ids[None, :]).any(dim=1)
        if context.class_means is not None and p.beta > 0:
            mask = context.old_rows[batch.rows]
            means = context.class_means[batch.rows]
            terms["class_mean"] = p.beta * class_mean_loss(context.old_view(batch.embeddings), means, mask, p.class_mean_reduction)
            batch.covered["class_mean"] = mask
        return terms
