"""finetune: L_c on the session's data only. The lower bound."""

from __future__ import annotations

from cvstream.models.methods.base import METHODS, Method


@METHODS.register("finetune")
class Finetune(Method):
    def loss(self, model, batch, context):
        return {"ce": self.classification_loss(model, batch.embeddings, batch.rows)}
