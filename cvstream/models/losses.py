"""Loss terms of SPEC section 4, as pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def zero_loss(inputs: torch.Tensor) -> torch.Tensor:
    """A term with nothing to act on: zero, but still in `inputs`' graph, so that backward and the trainer's sum work."""
    return inputs.sum() * 0.0


def normalized_softmax_ce(cosines: torch.Tensor, rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_c: -log softmax(W_norm f / T)[y], averaged over the batch."""
    return F.cross_entropy(cosines / temperature, rows)


def hardest_negative_triplet(
    anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, labels: torch.Tensor, margin: float
) -> torch.Tensor:
    """L_m: triplet loss, anchor f_t(x), positive f_{t-1}(x), negative the nearest old embedding of another class.

    `negatives[j]` is the old-generation embedding of batch sample j. Vectorised: one
    distance matrix, no loop over the batch. Anchors whose batch holds no other class are
    left out of the mean.
    """
    d_pos = (anchor - positive).norm(dim=1)
    distances = torch.cdist(anchor, negatives)
    same = labels[:, None] == labels[None, :]
    distances = distances.masked_fill(same, float("inf"))
    d_neg, _ = distances.min(dim=1)
    valid = torch.isfinite(d_neg)
    if not bool(valid.any()):
        return zero_loss(anchor)
    return F.relu(d_pos[valid] - d_neg[valid] + margin).mean()


def class_mean_loss(embeddings: torch.Tensor, means: torch.Tensor, mask: torch.Tensor, reduction: str = "covered") -> torch.Tensor:
    """L_d: ||f_t(x) - E_c||^2 for the samples whose class has a stored mean (mask).

    `covered` (the CVS code's `.mean()` over the picked samples) averages over those samples;
    `batch` sums them and divides by the batch size, so the term shrinks with the share of
    the batch it covers.
    """
    if not bool(mask.any()):
        return zero_loss(embeddings)
    squared = ((embeddings - means) ** 2).sum(dim=1)
    if reduction == "covered":
        return squared[mask].mean()
    if reduction == "batch":
        return (squared * mask).sum() / len(embeddings)
    raise ValueError(f"unknown reduction {reduction!r}; use covered or batch")


def old_classifier_ce(embeddings: torch.Tensor, old_weight: torch.Tensor, rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """BCT influence loss: normalised-softmax CE of f_t(x) through the frozen old classifier rows."""
    logits = embeddings @ F.normalize(old_weight, dim=1).t() / temperature
    return F.cross_entropy(logits, rows)


def influence_loss(
    embeddings: torch.Tensor, rows: torch.Tensor, old_weight: torch.Tensor, valid: torch.Tensor, temperature: float
) -> torch.Tensor:
    """BCT influence loss over the samples whose row the old classifier has (`valid[rows]`); the old classifier is
    only its valid rows. Zero where no sample of the batch has one."""
    keep = valid[rows]
    if not bool(keep.any()):
        return zero_loss(embeddings)
    index = torch.cumsum(valid.long(), 0) - 1  # each valid row's position among the valid rows
    return old_classifier_ce(embeddings[keep], old_weight[valid], index[rows[keep]], temperature)


def embedding_distance(new: torch.Tensor, old: torch.Tensor, hinge: float = 0.0) -> torch.Tensor:
    """||f_t(x) - f_{t-1}(x)|| per sample (the distance, not its square, as the MixBCT code), averaged;
    with `hinge` > 0, max(0, ||.|| - hinge)."""
    return F.relu((new - old).norm(dim=1) - hinge).mean()


def distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """LwF: KL(softmax(teacher/T) || softmax(student/T)) * T^2, averaged over the batch."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_student, teacher, reduction="batchmean") * temperature**2
