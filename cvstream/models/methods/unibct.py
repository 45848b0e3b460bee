"""unibct (Zhang et al., IJCAI 2022): BCT's influence loss against graph-refined old prototypes.

Old-class prototypes are re-estimated during the session: the old embeddings of each
class's training samples are propagated over a graph whose affinity A is a softmax of
the current model's embedding similarities (temperature 0.05, no self-loops), by
(1 - lambda)(I - lambda A)^-1 with lambda = 0.9, and averaged; re-estimation after 30% and
60% of the session's steps, the influence term off before the first one (defaults from the MixBCT
repository's UniBCT). The graph links samples of the same class only
(one small solve per class), so a noisy old embedding that the new model places away
from its class pulls the prototype less.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from cvstream.errors import ScenarioError
from cvstream.models.losses import influence_loss, zero_loss
from cvstream.models.methods.base import METHODS, Method, ReplayParams, old_classifier


def propagate(old: torch.Tensor, new: torch.Tensor, *, temperature: float, lam: float) -> torch.Tensor:
    """(1 - lambda)(I - lambda A)^-1 old, A = row softmax of new.new^T / T without self-loops; one class's samples."""
    n = len(old)
    if n < 2 or lam == 0:
        return old
    logits = (new @ new.t() / temperature).masked_fill(torch.eye(n, dtype=torch.bool, device=new.device), float("-inf"))
    affinity = torch.softmax(logits, dim=1)
    system = torch.eye(n, device=old.device, dtype=old.dtype) - lam * affinity.to(old.dtype)
    return (1 - lam) * torch.linalg.solve(system, old)


def refined_prototypes(old: torch.Tensor, new: torch.Tensor, rows: torch.Tensor, *, n_rows: int, temperature: float, lam: float):
    """Per row: the normalised mean of its samples' propagated old embeddings, and whether it had samples."""
    prototypes = torch.zeros(n_rows, old.shape[1], device=old.device, dtype=old.dtype)
    present = torch.zeros(n_rows, dtype=torch.bool, device=old.device)
    for row in torch.unique(rows).tolist():  # once per re-estimation, over classes
        members = rows == row
        prototypes[row] = propagate(old[members], new[members], temperature=temperature, lam=lam).mean(dim=0)
        present[row] = True
    return F.normalize(prototypes, dim=1), present


class UniBCTParams(ReplayParams):
    weight: float = Field(1.0, ge=0, description="lambda of BCT, the weight of the influence loss")
    graph_temperature: float = Field(0.05, gt=0, description="temperature of the affinity softmax")
    propagation: float = Field(0.9, ge=0, lt=1, description="lambda of (1 - lambda)(I - lambda A)^-1")
    refresh_at: tuple[float, ...] = Field((0.3, 0.6), min_length=1, description="shares of the session's steps after which prototypes are re-estimated")


@METHODS.register("unibct")
class UniBCT(Method):
    Params = UniBCTParams
    needs = frozenset({"previous_model", "previous_embeddings", "replay"})
    loss_terms = frozenset({"ce", "influence"})

    def __init__(self, params: UniBCTParams):
        super().__init__(params)
        self._old_weight: torch.Tensor | None = None
        self._valid: torch.Tensor | None = None
        self._pending: list[float] = []
        self.refreshes = 0  # re-estimations this session, for tests and logs

    @classmethod
    def check(cls, scenario) -> None:
        points = scenario.method.params.refresh_at
        if any(not 0 < p < 1 for p in points) or list(points) != sorted(points):
            raise ScenarioError(
                f"method.refresh_at {list(points)} must be increasing shares of the session's steps, each between 0 and 1 (e.g. [0.3, 0.6])",
                source=scenario.source,
                key_path="method.refresh_at",
            )

    def begin_session(self, model, context):
        self._old_weight = self._valid = None
        self.refreshes = 0
        self._pending = sorted(self.params.refresh_at)
        old = old_classifier(context)
        if old is not None:
            self._old_weight, self._valid = old

    def after_step(self, model, *, fraction, context, embed_training):
        if self._old_weight is None or not self._pending or fraction < self._pending[0]:
            return
        while self._pending and fraction >= self._pending[0]:
            self._pending.pop(0)
        p = self.params
        with torch.no_grad():
            prototypes, present = refined_prototypes(
                context.previous_embeddings, embed_training(), context.training_rows,
                n_rows=len(self._old_weight), temperature=p.graph_temperature, lam=p.propagation,
            )
        # Rows without samples this session keep the old classifier's row (they still act as negatives).
        self._old_weight = torch.where(present[:, None], prototypes, self._old_weight)
        self._valid = self._valid | present
        self.refreshes += 1

    def loss(self, model, batch, context):
        p = self.params
        terms = {"ce": self.classification_loss(model, batch.embeddings, batch.rows)}
        if self._old_weight is not None and p.weight > 0:
            if self.refreshes == 0:  # off until the first re-estimation
                influence = zero_loss(batch.embeddings)
            else:
                influence = influence_loss(context.old_view(batch.embeddings), batch.rows, self._old_weight, self._valid, p.temperature)
            terms["influence"] = p.weight * influence
        return terms
