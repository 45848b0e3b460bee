"""finetune: L_c on the session's data only. The lower bound."""

from __future__ import annotations

from cvstream.models.losses import normalized_softmax_ce
from cvstream.models.methods.base import METHODS, Method


@METHODS.register("finetune")
class Finetune(Method):
    def loss(self, model, batch, context):
        return {"ce": normalized_softmax_ce(model.cosine(batch.embeddings), batch.rows, self.params.temperature)}
