"""lwf (Li & Hoiem, 2016): L_c + knowledge distillation (T = 2) of the old generation's logits over its classes."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from cvstream.models.losses import distillation
from cvstream.models.methods.base import METHODS, Method, ReplayParams


class LwFParams(ReplayParams):
    weight: float = Field(1.0, ge=0, description="weight of the distillation term")
    distill_temperature: float = Field(2.0, gt=0, description="T of the distillation softmax")


@METHODS.register("lwf")
class LwF(Method):
    Params = LwFParams
    needs = frozenset({"previous_model", "replay"})
    loss_terms = frozenset({"ce", "distill"})

    def loss(self, model, batch, context):
        p = self.params
        terms = {"ce": self.classification_loss(model, batch.embeddings, batch.rows)}
        if context.previous_embed is not None and p.weight > 0:
            known = context.previous_known
            old = context.previous_embed(batch.inputs)
            # Both logit sets over the old generation's classes, scaled like L_c's logits.
            teacher = old @ context.previous_weight[known].t() / p.temperature
            student = batch.embeddings @ F.normalize(model.weight[known].float(), dim=1).t() / p.temperature
            terms["distill"] = p.weight * distillation(student, teacher, p.distill_temperature)
        return terms
