"""Each loss term on a tiny hand-computed case: its value and the direction of its gradient."""

from __future__ import annotations

import math

import pytest
import torch

from cvstream.models.losses import (
    class_mean_loss,
    distillation,
    embedding_distance,
    hardest_negative_triplet,
    influence_loss,
    normalized_softmax_ce,
    old_classifier_ce,
    zero_loss,
)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=True)


def test_normalized_softmax_ce_value_and_gradient():
    cosines = t([[1.0, 0.0]])
    loss = normalized_softmax_ce(cosines, torch.tensor([0]), temperature=0.5)
    # logits (2, 0): -log(e^2 / (e^2 + 1))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)))
    loss.backward()
    assert cosines.grad[0, 0] < 0 < cosines.grad[0, 1]  # raising the true class's cosine lowers the loss


def _triplet_case():
    labels = torch.tensor([0, 1, 1])
    anchor = t([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    old = torch.tensor([[0.8, 0.6], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    return anchor, old, labels


def test_hardest_negative_triplet_hand_case():
    anchor, old, labels = _triplet_case()
    loss = hardest_negative_triplet(anchor, old, old, labels, margin=0.3)
    # anchor 0: d_pos = sqrt(0.4); nearest other-class old vector is (0.6, 0.8) at sqrt(0.8)
    # anchor 1: d_pos = 0; nearest other-class old vector (0.8, 0.6) at sqrt(0.8): hinge inactive
    # anchor 2: d_pos = 0; nearest other-class old vector (0.8, 0.6) at sqrt(0.08)
    expected = (max(math.sqrt(0.4) - math.sqrt(0.8) + 0.3, 0) + 0 + max(-math.sqrt(0.08) + 0.3, 0)) / 3
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    # Moving anchor 0 toward its positive lowers the loss.
    toward_positive = old[0] - anchor.detach()[0]
    assert float(-anchor.grad[0] @ toward_positive) > 0
    assert torch.all(anchor.grad[1] == 0)  # inactive hinge: no gradient


def test_hardest_negative_triplet_matches_a_per_sample_loop():
    g = torch.Generator().manual_seed(0)
    anchor = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    old = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    labels = torch.randint(0, 5, (40,), generator=g)
    losses = []
    for i in range(len(anchor)):
        d_pos = (anchor[i] - old[i]).norm()
        d_neg = min((anchor[i] - old[j]).norm() for j in range(len(anchor)) if labels[j] != labels[i])
        losses.append(torch.relu(d_pos - d_neg + 0.1))
    expected = torch.stack(losses).mean()
    assert hardest_negative_triplet(anchor, old, old, labels, margin=0.1).item() == pytest.approx(expected.item(), rel=1e-5)


def test_hardest_negative_triplet_single_class_batch_is_zero_not_nan():
    anchor, old, _ = _triplet_case()
    loss = hardest_negative_triplet(anchor, old, old, torch.tensor([2, 2, 2]), margin=0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(anchor.grad).all()


def test_class_mean_loss_averages_over_the_samples_it_covers():
    f = t([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    means = torch.tensor([[0.0, 0.0], [0.0, 0.5], [0.0, 1.0]], dtype=torch.float64)
    covered = torch.tensor([False, True, True])
    assert class_mean_loss(f, means, covered, "batch").item() == pytest.approx((0.25 + 2.0) / 3)  # over the batch
    loss = class_mean_loss(f, means, covered)  # the CVS code: the mean over the picked samples
    assert loss.item() == pytest.approx((0.25 + 2.0) / 2)
    loss.backward()
    assert f.grad[1, 1] > 0 and torch.all(f.grad[0] == 0)  # pulls sample 1 down toward its mean only


def test_old_classifier_ce_uses_normalised_frozen_rows():
    f = t([[1.0, 0.0]])
    old_weight = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    loss = old_classifier_ce(f, old_weight, torch.tensor([0]), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    loss.backward()
    assert f.grad[0, 1] > 0  # leaning toward the wrong old row raises the loss


def test_influence_loss_uses_only_the_rows_the_old_classifier_has():
    f = t([[1.0, 0.0], [0.0, 1.0]])
    old_weight = torch.tensor([[1.0, 0.0], [5.0, 5.0], [0.0, 2.0]], dtype=torch.float64)
    valid = torch.tensor([True, False, True])  # row 1 is not part of the old classifier
    loss = influence_loss(f, torch.tensor([2, 1]), old_weight, valid, temperature=1.0)
    # Sample 0 (row 2): logits (1, 0) over rows 0 and 2, target row 2; sample 1's row has no old row: left out.
    assert loss.item() == pytest.approx(math.log(math.e + 1) - 0.0)
    loss.backward()
    assert torch.all(f.grad[1] == 0) and f.grad[0, 1] < 0  # leaning toward row 2 lowers it
    none = influence_loss(f, torch.tensor([1, 1]), old_weight, valid, temperature=1.0)
    assert none.item() == 0.0 and none.requires_grad


def test_zero_loss_keeps_the_graph():
    x = t([[1.0, -2.0]])
    zero = zero_loss(x)
    zero.backward()
    assert zero.item() == 0.0 and torch.all(x.grad == 0)


def test_embedding_distance_plain_and_hinged():
    new = t([[1.0, 0.0]])
    old = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    assert embedding_distance(new, old).item() == pytest.approx(math.sqrt(0.8))  # the distance, not its square
    assert embedding_distance(new, old, hinge=0.2).item() == pytest.approx(math.sqrt(0.8) - 0.2)
    assert embedding_distance(new, old, hinge=1.0).item() == 0.0
    embedding_distance(new, old).backward()
    assert float(-new.grad[0] @ (old[0] - new.detach()[0])) > 0  # the step moves f_t toward f_{t-1}


def test_distillation_hand_case():
    student = t([[2 * math.log(3), 0.0]])
    teacher = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    loss = distillation(student, teacher, temperature=2.0)
    # softmax(student / 2) = (3/4, 1/4), teacher (1/2, 1/2): KL = 0.5 ln(4/3), times T^2 = 4
    assert loss.item() == pytest.approx(4 * 0.5 * math.log(4 / 3))
    loss.backward()
    assert student.grad[0, 0] > 0  # the over-confident logit is pushed down


def test_distillation_averages_over_the_batch_and_puts_the_teacher_first():
    student = torch.tensor([[0.0, 0.0], [math.log(2), 0.0]], dtype=torch.float64)
    teacher = torch.tensor([[math.log(3), 0.0], [0.0, 0.0]], dtype=torch.float64)
    # T = 1. Row 0: teacher (3/4, 1/4) against student (1/2, 1/2); row 1: teacher (1/2, 1/2) against student (2/3, 1/3).
    row0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    row1 = 0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))
    assert distillation(student, teacher, temperature=1.0).item() == pytest.approx((row0 + row1) / 2)
    # KL is not symmetric: swapping student and teacher gives another value.
    swapped = (
        0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25) + (2 / 3) * math.log((2 / 3) / 0.5) + (1 / 3) * math.log((1 / 3) / 0.5)
    ) / 2
    assert distillation(teacher, student, temperature=1.0).item() == pytest.approx(swapped)
    assert swapped != pytest.approx((row0 + row1) / 2)
