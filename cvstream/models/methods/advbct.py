"""advbct (Pan et al., CVPR 2023): L_c + L_p2s + L_adv.

Point-to-sphere: a new embedding is pulled inside a sphere around its class's old centre
(the mean old embedding of the class's training samples), of elastic radius: the class's
own mean old distance to that centre, times `radius_scale`; nothing pulls once inside.
Adversarial: a small discriminator learns to tell old embeddings from new ones; the new
embeddings reach it through gradient reversal, so the encoder learns to make them look
old, with the reversal ramped over the session as 2 / (1 + exp(-10 p)) - 1 (DANN's
schedule). Term weights 1 and 1; the radius rule, the ramp, and the
discriminator (64 hidden units, SGD lr 0.01) are our choices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from cvstream.models.losses import zero_loss
from cvstream.models.methods.base import METHODS, Method, OwnOptimizer, ReplayParams, row_means


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def reverse_gradient(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Identity forward; backward multiplies the gradient by -coeff."""
    return _Reverse.apply(x, coeff)


def ramp(fraction: float) -> float:
    """DANN's schedule: 0 at the session's start, ~1 at its end."""
    return 2.0 / (1.0 + math.exp(-10.0 * fraction)) - 1.0


def point_to_sphere(embeddings: torch.Tensor, centres: torch.Tensor, radius: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean over masked samples of max(0, ||f - c|| - r): zero inside the sphere, a unit pull towards c outside."""
    if not bool(mask.any()):
        return zero_loss(embeddings)
    return F.relu((embeddings[mask] - centres[mask]).norm(dim=1) - radius[mask]).mean()


def adversarial(discriminator: torch.nn.Module, new: torch.Tensor, old: torch.Tensor, coeff: float) -> torch.Tensor:
    """Discriminator's BCE (old -> 1, new -> 0); the encoder gets that gradient on `new` reversed and scaled by coeff."""
    logit_old = discriminator(old).squeeze(1)
    logit_new = discriminator(reverse_gradient(new, coeff)).squeeze(1)
    return F.binary_cross_entropy_with_logits(logit_old, torch.ones_like(logit_old)) + F.binary_cross_entropy_with_logits(
        logit_new, torch.zeros_like(logit_new)
    )


class AdvBCTParams(ReplayParams):
    p2s_weight: float = Field(1.0, ge=0, description="weight of the point-to-sphere loss")
    adv_weight: float = Field(1.0, ge=0, description="largest gradient-reversal factor, reached at the session's end")
    radius_scale: float = Field(1.0, ge=0, description="sphere radius as a multiple of the class's mean old distance to its centre")
    discriminator_hidden: int = Field(64, ge=1, description="hidden units of the discriminator")
    discriminator_lr: float = Field(0.01, gt=0, description="SGD learning rate of the discriminator")


@METHODS.register("advbct")
class AdvBCT(Method):
    Params = AdvBCTParams
    needs = frozenset({"previous_model", "previous_embeddings", "replay"})
    loss_terms = frozenset({"ce", "p2s", "adv"})

    def __init__(self, params: AdvBCTParams):
        super().__init__(params)
        self._centres: torch.Tensor | None = None
        self._radius: torch.Tensor | None = None
        self._has: torch.Tensor | None = None
        self.discriminator: torch.nn.Module | None = None
        self._optimizer: OwnOptimizer | None = None
        self._fraction = 0.0

    def begin_session(self, model, context):
        self._centres = self._radius = self._has = self.discriminator = self._optimizer = None
        self._fraction = 0.0
        if context.previous_embeddings is None:
            return
        old, rows = context.previous_embeddings, context.training_rows
        centres, counts = row_means(old, rows, model.num_classes)
        radius, _ = row_means((old - centres[rows]).norm(dim=1), rows, model.num_classes)
        self._centres, self._radius, self._has = centres, radius * self.params.radius_scale, counts > 0
        # A fresh discriminator per session (initialised from the engine's seeded per-session RNG).
        dim, h = old.shape[1], self.params.discriminator_hidden
        self.discriminator = torch.nn.Sequential(torch.nn.Linear(dim, h), torch.nn.ReLU(), torch.nn.Linear(h, 1)).to(old.device)
        self._optimizer = OwnOptimizer(self.discriminator, lr=self.params.discriminator_lr)

    def after_step(self, model, *, fraction, context, embed_training):
        self._fraction = fraction
        if self._optimizer is not None:
            self._optimizer.step()

    def loss(self, model, batch, context):
        p = self.params
        terms = {"ce": self.classification_loss(model, batch.embeddings, batch.rows)}
        if self._centres is None or context.previous_embed is None:
            return terms
        new = context.old_view(batch.embeddings)  # across a model upgrade: its first d_old components, as the old space
        terms["p2s"] = p.p2s_weight * point_to_sphere(new, self._centres[batch.rows], self._radius[batch.rows], self._has[batch.rows])
        old = context.previous_embed(batch.inputs)
        terms["adv"] = adversarial(self.discriminator, new.float(), old, p.adv_weight * ramp(self._fraction))
        return terms
