"""bct (Shen et al., CVPR 2020): L_c + lambda CE(W_{t-1} frozen, f_t(x)), lambda = 1.

The old classifier has no rows for classes it never saw; with `synthesize_rows` (the
paper's choice for new classes) each such row is the mean old embedding of the class's
training samples of this session.
"""

from __future__ import annotations

import torch
from pydantic import Field

from cvstream.errors import ScenarioError
from cvstream.models.losses import influence_loss
from cvstream.models.methods.base import METHODS, Method, ReplayParams, old_classifier
from cvstream.sessions.streams import SETUPS


class BCTParams(ReplayParams):
    weight: float = Field(1.0, ge=0, description="lambda, the weight of the influence loss")
    synthesize_rows: bool = Field(True, description="old-classifier rows for unseen classes from mean old embeddings")


@METHODS.register("bct")
class BCT(Method):
    Params = BCTParams
    needs = frozenset({"previous_model", "previous_embeddings", "replay"})
    loss_terms = frozenset({"ce", "influence"})

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
        only_new_classes = not SETUPS.get(scenario.stream.name).revisits_classes
        if not p.synthesize_rows and no_replay and only_new_classes:
            raise ScenarioError(
                f"bct without synthesised rows and without replay on a {scenario.stream.name!r} stream (later sessions bring "
                "only new classes) never sees a class the old classifier knows, so its influence loss is always empty; "
                "set method.synthesize_rows: true or give it a replay buffer (method.replay: true, replay.size > 0)",
                source=scenario.source,
                key_path="method.synthesize_rows",
            )

    def begin_session(self, model, context):
        self._old_weight = self._valid = None
        old = old_classifier(context)  # without synthesize_rows the context has no previous embeddings: no rows added
        if old is not None:
            self._old_weight, self._valid = old

    def loss(self, model, batch, context):
        p = self.params
        terms = {"ce": self.classification_loss(model, batch.embeddings, batch.rows)}
        if self._old_weight is not None and p.weight > 0:
            # Across a model upgrade: the new embedding's first d_old components, BCT's zero-padded old classifier.
            influence = influence_loss(context.old_view(batch.embeddings), batch.rows, self._old_weight, self._valid, p.temperature)
            terms["influence"] = p.weight * influence
            batch.covered["influence"] = self._valid[batch.rows]
        return terms
