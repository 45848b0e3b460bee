"""frozen: train on the first session only (L_c), then never update: the no-update baseline.

Later sessions take no step and cost nothing to train; the gallery stays at generation 0,
so compatibility is perfect by construction. Every other method must beat it to be worth
its training and its generation changes.
"""

from __future__ import annotations

from cvstream.models.methods.base import METHODS, Method


@METHODS.register("frozen")
class Frozen(Method):
    def trains(self, session: int) -> bool:
        return session == 0

    def loss(self, model, batch, context):
        return {"ce": self.classification_loss(model, batch.embeddings, batch.rows)}
