"""What a method is: a small object that adds loss terms and says what it needs from the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import torch
from pydantic import Field

from cvstream.models.losses import normalized_softmax_ce
from cvstream.registry import Params, Registry

# What a method may ask the engine for; the engine computes and hands over only these.
NEEDS = frozenset({"previous_model", "previous_embeddings", "replay", "class_means", "seen_data"})


class MethodParams(Params):
    temperature: float = Field(0.05, gt=0, description="T of the normalised-softmax cross-entropy")


class ReplayParams(MethodParams):
    replay: bool = Field(True, description="also train on the replay buffer (the same buffer cvs uses, for a fair comparison)")


@dataclass
class Batch:
    inputs: torch.Tensor  # float inputs on the device, already augmented
    rows: torch.Tensor  # classifier row of each sample
    class_ids: torch.Tensor  # original class ids
    embeddings: torch.Tensor  # f_t(x), L2-normalised, with gradient
    # Per loss term that acts on only part of the batch, the bool mask of the samples it covered (train events'
    # `term_samples`); a term not named here covered the whole batch.
    covered: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TrainContext:
    """What the engine hands a method for one session; only what the method declared it needs is set."""

    session: int
    previous_embed: Callable[[torch.Tensor], torch.Tensor] | None = None  # f_{t-1}, frozen, counted
    # Previous generation's classifier, aligned with the current rows: its normalised row, and whether it had one.
    previous_weight: torch.Tensor | None = None
    previous_known: torch.Tensor | None = None
    # f_{t-1} of every training sample of the session (no augmentation), and each sample's current row.
    previous_embeddings: torch.Tensor | None = None
    training_rows: torch.Tensor | None = None
    class_means: torch.Tensor | None = None  # (classifier rows, old_dim): E_c per row, zeros where unknown
    old_rows: torch.Tensor | None = None  # bool per row: the class has stored gallery vectors from an earlier session
    # The previous generation's embedding dimension, where a model upgrade (SPEC section 12) made this one wider;
    # every old vector, centre and classifier row above has it. None: the same dimension as the current model.
    old_dim: int | None = None

    def old_view(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The part of new embeddings that compares with old ones: their first `old_dim` components, exactly as
        zero-padding the old vectors would (BCT's padded old classifier, the gallery's narrower segments)."""
        if self.old_dim is None or embeddings.shape[-1] == self.old_dim:
            return embeddings
        return embeddings[..., : self.old_dim]


class Method:
    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    # A subset of NEEDS.
    needs: ClassVar[frozenset[str]] = frozenset()
    # The names of the terms `loss` returns once it has all it declared it needs (a previous generation, ...); without
    # it (the first session) it may return fewer, and a term whose weight is 0 may be left out.
    loss_terms: ClassVar[frozenset[str]] = frozenset({"ce"})
    # Backbone forwards per batch sample that `loss` runs itself (e.g. on mixed inputs), for the cost tables.
    extra_forwards: ClassVar[int] = 0

    def __init__(self, params: MethodParams):
        self.params = params
        if getattr(params, "replay", True) is False:
            self.needs = type(self).needs - {"replay"}

    @classmethod
    def check(cls, scenario) -> None:
        """Raise ScenarioError if the scenario cannot give this method what it needs."""

    def training_ids(self, *, session_ids: np.ndarray, replay_ids: np.ndarray, seen_ids: np.ndarray | None = None) -> np.ndarray:
        """The samples this session trains on: the arrivals, plus the replay buffer if the method uses one."""
        if "replay" in self.needs and len(replay_ids):
            return np.concatenate([session_ids, replay_ids])
        return session_ids

    def begin_session(self, model: torch.nn.Module, context: TrainContext) -> None:
        """Called once before the first step of a session, to derive per-session state from the context."""

    def upgrade_head(self, *, old_dim: int, new_dim: int) -> dict | None:
        """The embedding head of the network a model upgrade builds (`EmbeddingNet(head=...)`); None: a linear layer."""
        return None

    def trains(self, session: int) -> bool:
        """Whether `session` takes gradient steps; where not, the trainer only calls `begin_session` and the generation stays."""
        return True

    def after_step(self, model: torch.nn.Module, *, fraction: float, context: TrainContext, embed_training: Callable[[], torch.Tensor]) -> None:
        """Called after each optimiser step with the share of the session's steps done; `embed_training()` gives
        the current model's embeddings of the session's training samples (no augmentation, counted)."""

    def classification_loss(self, model: torch.nn.Module, embeddings: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """L_c, the intra-session term every method starts from."""
        return normalized_softmax_ce(model.cosine(embeddings), rows, self.params.temperature)

    def loss(self, model: torch.nn.Module, batch: Batch, context: TrainContext) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms; the trainer sums them."""
        raise NotImplementedError


def row_sums(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per classifier row: the sum of `values` over the samples of that row, and how many samples it has."""
    sums = values.new_zeros((n_rows, *values.shape[1:])).index_add_(0, rows, values)
    return sums, torch.bincount(rows, minlength=n_rows)


def row_means(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per classifier row: the mean of `values` over its samples (zero where it has none), and how many it has."""
    sums, counts = row_sums(values, rows, n_rows)
    return sums / counts.clamp(min=1).view(-1, *[1] * (values.dim() - 1)), counts


def old_classifier(context: TrainContext) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The previous classifier's rows, plus, for classes it never saw, the mean old embedding of their training samples.

    Returns (rows x dim weight, bool per row: usable), or None in the first session.
    """
    if context.previous_weight is None:
        return None
    weight, valid = context.previous_weight.clone(), context.previous_known.clone()
    if context.previous_embeddings is not None:
        sums, counts = row_sums(context.previous_embeddings, context.training_rows, len(weight))
        synthesized = ~valid & (counts > 0)
        weight[synthesized] = torch.nn.functional.normalize(sums[synthesized], dim=1)
        valid = valid | synthesized
    return weight, valid


class OwnOptimizer:
    """SGD with momentum 0.9 for a module a method owns (a discriminator, a branch), stepped from `after_step`:
    the trainer's optimiser only knows the model's parameters."""

    def __init__(self, module: torch.nn.Module, *, lr: float):
        self.sgd = torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9)

    def step(self) -> None:
        """Apply the gradients the trainer's backward left on the module, then clear them."""
        self.sgd.step()
        self.sgd.zero_grad(set_to_none=True)


METHODS: Registry[Method] = Registry("method")
