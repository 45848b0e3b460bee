"""nccl (Wu et al., AAAI 2022): L_c + 1.0 L_feat + 0.01 L_logit against a queue of old embeddings.

L_feat is a supervised contrastive loss between each new embedding f_t(x_i) and old
embeddings f_{t-1}(x_j) (the batch's own and a FIFO queue of 8,192; weights and queue size from the MixBCT
repository's NCCL), positives the same class weighted 0.5 (cos(f_{t-1}(x_i),
f_{t-1}(x_j)) + 1): neighbours the old model agrees on count more. L_logit is the same
loss over L2-normalised logits through the old classifier (classes it never saw: mean
old embeddings). Old embeddings whose old-classifier prediction entropy exceeds
`max_entropy` (a share of log K) are not credible and never enter the contrast. Our choices, no source: `max_entropy` 0.5
and the contrast temperature 0.07 (the usual SupCon/MoCo value).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from cvstream.models.losses import zero_loss
from cvstream.models.methods.base import METHODS, Method, ReplayParams, old_classifier


def consensus_contrastive(
    anchors: torch.Tensor, anchor_old: torch.Tensor, anchor_labels: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor, *, temperature: float
) -> torch.Tensor:
    """-sum_p w_ip log softmax_p(a_i.k / T) / sum_p w_ip, w_ip = 0.5 (cos(old_i, k_p) + 1) over same-class keys p.

    Rows are L2-normalised vectors; anchors without a positive key are left out of the mean.
    """
    log_prob = F.log_softmax(anchors @ keys.t() / temperature, dim=1)
    positive = (anchor_labels[:, None] == key_labels[None, :]).to(anchors.dtype)
    weights = 0.5 * (anchor_old @ keys.t() + 1) * positive
    total = weights.sum(dim=1)
    has = total > 0
    if not bool(has.any()):
        return zero_loss(anchors)
    per_anchor = -(weights * log_prob).sum(dim=1)[has] / total[has]
    return per_anchor.mean()


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per row, divided by log K (0: certain, 1: uniform)."""
    if logits.shape[1] < 2:
        return torch.zeros(len(logits), device=logits.device)
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1) / math.log(logits.shape[1])


class NCCLParams(ReplayParams):
    feat_weight: float = Field(1.0, ge=0, description="weight of the feature-level consensus contrastive loss")
    logit_weight: float = Field(0.01, ge=0, description="weight of the logit-level one")
    queue_size: int = Field(8192, ge=0, description="old embeddings kept from earlier batches of the session")
    contrast_temperature: float = Field(0.07, gt=0, description="temperature of both contrastive losses")
    max_entropy: float = Field(0.5, gt=0, le=1, description="old embeddings above this normalised prediction entropy are left out")


@METHODS.register("nccl")
class NCCL(Method):
    Params = NCCLParams
    needs = frozenset({"previous_model", "previous_embeddings", "replay"})
    loss_terms = frozenset({"ce", "feat", "logit"})

    def __init__(self, params: NCCLParams):
        super().__init__(params)
        self._old_weight: torch.Tensor | None = None
        self._queue: torch.Tensor | None = None
        self._queue_labels: torch.Tensor | None = None

    def begin_session(self, model, context):
        self._old_weight = self._queue = self._queue_labels = None
        old = old_classifier(context)
        if old is not None:
            weight, valid = old
            self._old_weight = weight[valid]
            self._queue = torch.empty(0, weight.shape[1], device=weight.device)
            self._queue_labels = torch.empty(0, dtype=torch.long, device=weight.device)

    def loss(self, model, batch, context):
        p = self.params
        terms = {"ce": self.classification_loss(model, batch.embeddings, batch.rows)}
        if self._old_weight is None or context.previous_embed is None:
            return terms
        old = context.previous_embed(batch.inputs)
        credible = normalized_entropy(old @ self._old_weight.t() / p.temperature) <= p.max_entropy
        keys = torch.cat([old[credible], self._queue])
        key_labels = torch.cat([batch.class_ids[credible], self._queue_labels])
        new = context.old_view(batch.embeddings)  # across a model upgrade: its first d_old components
        terms["feat"] = p.feat_weight * consensus_contrastive(
            new, old, batch.class_ids, keys, key_labels, temperature=p.contrast_temperature
        )
        # Logits through the frozen old classifier, normalised so the same temperature fits both levels.
        logits_of = lambda f: F.normalize(f @ self._old_weight.t(), dim=1)  # noqa: E731
        terms["logit"] = p.logit_weight * consensus_contrastive(
            logits_of(new), logits_of(old), batch.class_ids, logits_of(keys), key_labels, temperature=p.contrast_temperature
        )
        if p.queue_size:
            self._queue = torch.cat([old[credible].detach(), self._queue])[: p.queue_size]
            self._queue_labels = torch.cat([batch.class_ids[credible], self._queue_labels])[: p.queue_size]
        return terms
