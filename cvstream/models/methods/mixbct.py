"""mixbct (Lin et al., 2023): the classifier is trained on a mix of new and old embeddings.

A share `mix_ratio` (30%) of each batch's embeddings is replaced by the old generation's
embeddings of the same images, taken only from "credible" samples: those whose old
embedding lies within the `credible_fraction` (90%) nearest to its class's old mean.
Class means and radii come from the old embeddings of the session's training samples
(no augmentation); the batch's old embeddings are of the augmented images.
"""

from __future__ import annotations

import torch
from pydantic import Field

from cvstream.errors import ScenarioError
from cvstream.models.methods.base import METHODS, Method, ReplayParams, row_means


class MixBCTParams(ReplayParams):
    mix_ratio: float = Field(0.3, gt=0, le=1, description="share of a batch's embeddings replaced by old ones")
    credible_fraction: float = Field(0.9, gt=0, le=1, description="share of each class, nearest its old mean, that may be mixed")


@METHODS.register("mixbct")
class MixBCT(Method):
    Params = MixBCTParams
    needs = frozenset({"previous_model", "previous_embeddings", "replay"})

    def __init__(self, params: MixBCTParams):
        super().__init__(params)
        self._centres: torch.Tensor | None = None
        self._radius: torch.Tensor | None = None

    @classmethod
    def check(cls, scenario) -> None:
        p = scenario.method.params
        if round(p.mix_ratio * scenario.training.batch_size) < 1:
            raise ScenarioError(
                f"mix_ratio {p.mix_ratio} of a batch of {scenario.training.batch_size} mixes no embedding; "
                "raise method.mix_ratio or training.batch_size",
                source=scenario.source,
                key_path="method.mix_ratio",
            )

    def begin_session(self, model, context):
        self._centres = self._radius = None
        if context.previous_embeddings is None:
            return
        old, rows = context.previous_embeddings, context.training_rows
        centres, _ = row_means(old, rows, model.num_classes)
        distance = (old - centres[rows]).norm(dim=1)
        radius = torch.full((model.num_classes,), -1.0, device=old.device)  # -1: no credible sample
        for row in torch.unique(rows).tolist():  # once per session, over classes, not samples
            radius[row] = torch.quantile(distance[rows == row], self.params.credible_fraction)
        self._centres, self._radius = centres, radius

    def loss(self, model, batch, context):
        p = self.params
        embeddings = batch.embeddings
        terms = {}
        if self._centres is not None and context.previous_embed is not None:
            old = context.previous_embed(batch.inputs)
            credible = (old - self._centres[batch.rows]).norm(dim=1) <= self._radius[batch.rows]
            quota = max(1, round(p.mix_ratio * len(old)))
            # The batch is already shuffled, so its first credible samples are a random choice.
            replace = credible & (torch.cumsum(credible.long(), 0) <= quota)
            # Across a model upgrade the old embeddings are zero-padded: the classifier reads them through its first d_old components.
            old = torch.nn.functional.pad(old, (0, embeddings.shape[1] - old.shape[1]))
            embeddings = torch.where(replace[:, None], old, embeddings)
        terms["ce"] = self.classification_loss(model, embeddings, batch.rows)
        return terms
