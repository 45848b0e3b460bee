"""m2sd (Lin et al., AAAI 2024): multiple-mixing self-distillation in the base session, prototypes afterwards.

Base session (session 0): L_c on the batch; virtual classes from MixUp and CutMix of the
batch with a shuffled copy (lambda ~ Beta(1, 1)), each branch trained with cross-entropy
on the mixed labels; a symmetric KL between the two branches' predictions; and
self-distillation: an attention-enhanced branch (multi-head self-attention over the
backbone feature, cut into tokens, and its own classifier W') predicts the MixUp branch's
classes, and the network's prediction is pulled towards it by KL. Later sessions: the
model is frozen (no step, the generation stays) and each new class gets a classifier row,
its mean embedding. Simplified against the paper: the paper's attention works on four
stages' feature maps (MHSA and coordinate attention, fused by BiFPN, plus an
attention-map transfer term); our backbones hand over one pooled vector, so the
enhancement is self-attention over that vector's tokens, and there is no map term.
Our choices where the paper notes give none: Beta(1, 1), every weight 1, 8 tokens, 2 heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from cvstream.errors import ScenarioError
from cvstream.models.backbones import BACKBONES
from cvstream.models.methods.base import METHODS, Method, MethodParams, OwnOptimizer, old_classifier
from cvstream.sessions.streams import SETUPS


def mixup(x: torch.Tensor, partner: torch.Tensor, lam: float) -> torch.Tensor:
    return lam * x + (1 - lam) * partner


def cutmix(x: torch.Tensor, partner: torch.Tensor, lam: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """Paste a box of area share (1 - lam) from `partner` into `x`; returns the images and the share of `x` kept."""
    h, w = x.shape[-2:]
    bh, bw = int(round(h * (1 - lam) ** 0.5)), int(round(w * (1 - lam) ** 0.5))
    top = int(torch.randint(0, h - bh + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
    out = x.clone()
    out[..., top : top + bh, left : left + bw] = partner[..., top : top + bh, left : left + bw]
    return out, 1.0 - bh * bw / (h * w)


def mixed_ce(logits: torch.Tensor, rows: torch.Tensor, partner_rows: torch.Tensor, lam: float) -> torch.Tensor:
    """Cross-entropy against the virtual label lam y + (1 - lam) y_partner."""
    return lam * F.cross_entropy(logits, rows) + (1 - lam) * F.cross_entropy(logits, partner_rows)


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """KL(p_a || p_b) + KL(p_b || p_a), averaged over the batch."""
    log_a, log_b = F.log_softmax(logits_a, dim=1), F.log_softmax(logits_b, dim=1)
    return (F.kl_div(log_b, log_a, log_target=True, reduction="batchmean") + F.kl_div(log_a, log_b, log_target=True, reduction="batchmean"))


def distill(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student), the teacher held fixed."""
    return F.kl_div(F.log_softmax(student_logits, dim=1), F.log_softmax(teacher_logits.detach(), dim=1), log_target=True, reduction="batchmean")


class AttentionBranch(torch.nn.Module):
    """Self-attention over the backbone feature cut into `tokens` parts, then its own classifier W'."""

    def __init__(self, *, dim: int, classes: int, tokens: int, heads: int):
        super().__init__()
        self.tokens = tokens
        width = dim // tokens
        self.attention = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.reshape(len(features), self.tokens, -1)
        attended, _ = self.attention(x, x, x, need_weights=False)
        return self.head(self.norm(x + attended).flatten(1))


class M2SDParams(MethodParams):
    mix_alpha: float = Field(1.0, gt=0, description="lambda ~ Beta(alpha, alpha) for MixUp and CutMix")
    virtual_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy on the two virtual branches")
    kl_weight: float = Field(1.0, ge=0, description="weight of the symmetric KL between the branches")
    distill_weight: float = Field(1.0, ge=0, description="weight of the self-distillation from the attention branch")
    attention_tokens: int = Field(8, ge=1, description="tokens the backbone feature is cut into")
    attention_heads: int = Field(2, ge=1, description="heads of the self-attention")
    branch_lr: float = Field(0.01, gt=0, description="SGD learning rate of the attention branch")


@METHODS.register("m2sd")
class M2SD(Method):
    Params = M2SDParams
    # Later sessions: the model is frozen, so "previous" embeddings are the current ones, for the prototype rows.
    needs = frozenset({"previous_embeddings"})
    loss_terms = frozenset({"ce", "virtual", "kl", "distill"})
    extra_forwards = 2  # the MixUp and CutMix inputs

    def __init__(self, params: M2SDParams):
        super().__init__(params)
        self.branch: AttentionBranch | None = None
        self._optimizer: OwnOptimizer | None = None

    @classmethod
    def check(cls, scenario) -> None:
        if BACKBONES.get(scenario.model.backbone).input_kind != "images":
            raise ScenarioError(
                f"m2sd mixes images (MixUp, CutMix), but backbone {scenario.model.backbone!r} takes feature vectors",
                source=scenario.source,
                key_path="method.name",
            )
        if SETUPS.get(scenario.stream.name).revisits_classes:  # the frozen model would ignore their later samples
            fitting = [name for name in SETUPS.names() if not SETUPS.get(name).revisits_classes]
            raise ScenarioError(
                f"m2sd trains only on its base session (session 0) and then freezes the model; a {scenario.stream.name!r} "
                "stream brings more samples of known classes later, which it would ignore. Use a stream setup whose "
                f"later sessions bring only new classes: {', '.join(repr(n) for n in fitting)} (m2sd is meant for a "
                "few samples of new classes)",
                source=scenario.source,
                key_path="stream.setup",
            )
        p = scenario.method.params
        with torch.random.fork_rng(devices=[]):  # a throw-away backbone, only for its feature size
            feature = BACKBONES.get(scenario.model.backbone)(in_channels=1, width=scenario.model.width).out_dim
        if feature % p.attention_tokens or (feature // p.attention_tokens) % p.attention_heads:
            raise ScenarioError(
                f"the backbone feature ({feature}) must split into method.attention_tokens ({p.attention_tokens}) tokens "
                f"whose width method.attention_heads ({p.attention_heads}) divides",
                source=scenario.source,
                key_path="method.attention_tokens",
            )

    def trains(self, session: int) -> bool:
        return session == 0

    def begin_session(self, model, context):
        self.branch = self._optimizer = None
        if context.session == 0:
            p = self.params
            device = model.weight.device
            self.branch = AttentionBranch(
                dim=model.backbone.out_dim, classes=model.num_classes, tokens=p.attention_tokens, heads=p.attention_heads
            ).to(device)
            self._optimizer = OwnOptimizer(self.branch, lr=p.branch_lr)
            return
        old = old_classifier(context)
        if old is not None:  # new classes: their mean embedding (the frozen model's) as their row
            weight, valid = old
            new_rows = valid & ~context.previous_known
            with torch.no_grad():
                model.weight[new_rows] = weight[new_rows].to(model.weight.dtype)

    def after_step(self, model, *, fraction, context, embed_training):
        if self._optimizer is not None:
            self._optimizer.step()

    def loss(self, model, batch, context):
        p = self.params
        terms = {"ce": self.classification_loss(model, batch.embeddings, batch.rows)}
        if self.branch is None:
            return terms
        # Virtual samples: each image mixed with a shuffled partner (the engine seeds the global RNG per session).
        perm = torch.randperm(len(batch.inputs)).to(batch.inputs.device)
        lam = float(torch.distributions.Beta(p.mix_alpha, p.mix_alpha).sample())
        partner, partner_rows = batch.inputs[perm], batch.rows[perm]
        cut, lam_cut = cutmix(batch.inputs, partner, lam)
        features_mix = model.backbone(mixup(batch.inputs, partner, lam))
        logits_mix = model.cosine(model.embedding(features_mix)) / p.temperature
        logits_cut = model.cosine(model(cut)) / p.temperature
        terms["virtual"] = p.virtual_weight * (
            mixed_ce(logits_mix, batch.rows, partner_rows, lam) + mixed_ce(logits_cut, batch.rows, partner_rows, lam_cut)
        )
        terms["kl"] = p.kl_weight * symmetric_kl(logits_mix, logits_cut)
        teacher = self.branch(features_mix.float())
        # The branch learns the virtual labels itself; the network distils from it.
        terms["distill"] = p.distill_weight * (mixed_ce(teacher, batch.rows, partner_rows, lam) + distill(logits_mix, teacher))
        return terms
