"""bt2 (Zhou et al., ICCV 2023, "BT^2: Backward-compatible training with basis transformation").

At a model upgrade (SPEC section 12) the new network's embedding layer is BT^2's basis
transformation (`cvstream.models.net.BasisTransform`): a compatible branch `a` (`extra_dims`)
and the new model's own embedding `f`, scaled by C, joined and rotated by two learned
orthonormal maps, so that the whole keeps everything `f` knows while its first `d_old`
coordinates, the block the old gallery is searched with, are trained against the old
generation: `1 - cos(block, f_{t-1}(x))` (weight 10, as the official code) and BCT's influence
loss through the old classifier on the block (weight 1; classes it never saw get their mean
old embedding as a row). `L_c` on the whole embedding gives it the new model's
discrimination. In a session without an upgrade the head stays as it is and the same two
terms act on the whole embedding (the old one has its dimension): BCT plus the cosine term.

Where this differs from the official code (YifeiZhou02/BT-2), and why: the official recipe
first trains an independent new model and distils its embedding into `f` (a cosine term,
weight 1) with a classifier on `f` alone; cvstream trains one network per session, so `f` is
learnt by `L_c` through the whole embedding instead. The official influence term is a
cross-entropy without temperature against fixed class prototypes, weight 10; here it is
BCT's, with the method's temperature, weight 1. The compatible branch is a linear map of the
backbone feature (the official ResNet-50 variant has a 1x1 convolution there).
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from cvstream.errors import ScenarioError
from cvstream.models.losses import influence_loss
from cvstream.models.methods.base import METHODS, Method, ReplayParams, old_classifier


class BT2Params(ReplayParams):
    influence_weight: float = Field(1.0, ge=0, description="weight of BCT's influence loss on the compatible block")
    cosine_weight: float = Field(10.0, ge=0, description="weight of 1 - cos(compatible block, old embedding of the same image)")
    extra_dims: int | None = Field(
        None, ge=1, le=8192, description="width of the compatible branch a, at most the old dimension; None: a quarter of it (the paper's 32 of 128)"
    )
    scale: float = Field(3.0, gt=0, description="C: the new branch f enters the basis transformation as C f")


@METHODS.register("bt2")
class BT2(Method):
    Params = BT2Params
    needs = frozenset({"previous_model", "previous_embeddings", "replay"})
    loss_terms = frozenset({"ce", "influence", "cosine"})

    def __init__(self, params: BT2Params):
        super().__init__(params)
        self._old_weight = self._valid = None

    def extra_dims(self, old_dim: int) -> int:
        return self.params.extra_dims or max(1, old_dim // 4)

    @classmethod
    def check(cls, scenario) -> None:
        method = cls(scenario.method.params)
        for session, spec in sorted(scenario.model.upgrades.items()):
            old = scenario.model.at(session - 1).embedding_dim
            extra = method.extra_dims(old)
            if extra > old or extra >= spec.embedding_dim:
                raise ScenarioError(
                    f"method.extra_dims = {extra} must be at most the old dimension ({old}) and below the new one "
                    f"({spec.embedding_dim}) of the upgrade at session {session}",
                    source=scenario.source,
                    key_path="method.extra_dims",
                )

    def upgrade_head(self, *, old_dim: int, new_dim: int) -> dict:
        p = self.params
        return {"name": "basis", "old_dim": old_dim, "extra_dims": self.extra_dims(old_dim), "scale": p.scale}

    def begin_session(self, model, context):
        self._old_weight = self._valid = None
        old = old_classifier(context)
        if old is not None:
            self._old_weight, self._valid = old

    def loss(self, model, batch, context):
        p = self.params
        terms = {"ce": self.classification_loss(model, batch.embeddings, batch.rows)}
        if context.previous_embed is None:
            return terms
        block = F.normalize(context.old_view(batch.embeddings), dim=1)  # the coordinates the old gallery sees
        if p.cosine_weight > 0:
            old = context.previous_embed(batch.inputs)
            terms["cosine"] = p.cosine_weight * (1 - (block * old).sum(dim=1)).mean()
        if self._old_weight is not None and p.influence_weight > 0:
            influence = influence_loss(block, batch.rows, self._old_weight, self._valid, p.temperature)
            terms["influence"] = p.influence_weight * influence
            batch.covered["influence"] = self._valid[batch.rows]
        return terms
