"""The methods frozen, unibct, nccl, advbct and m2sd: loss terms on hand-made tensors, and their sessions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_dict, tiny_scenario, write_scenario
from cvstream.cli import main
from cvstream.errors import ScenarioError
from cvstream.models import METHODS, build_method
from cvstream.models.methods.advbct import adversarial, point_to_sphere, ramp, reverse_gradient
from cvstream.models.methods.base import Batch, TrainContext
from cvstream.models.methods.m2sd import cutmix, distill, mixed_ce, symmetric_kl
from cvstream.models.methods.nccl import consensus_contrastive, normalized_entropy
from cvstream.models.methods.unibct import propagate, refined_prototypes
from cvstream.models.net import EmbeddingNet
from cvstream.models.trainer import embed
from cvstream.sessions.streams import SETUPS
from cvstream.simulator import Simulator

E = torch.eye(3)


def _net(classes, dim=3):
    net = EmbeddingNet(backbone="mlp", in_channels=3, width=4, embedding_dim=dim)
    net.add_classes(classes, torch.Generator().manual_seed(0))
    return net


def _train_events(result):
    events = result.events
    return events[events.kind == "train"]


def _train_forwards(result):
    costs = result.costs
    return costs[costs.phase == "train"].sort_values("session").backbone_forwards.tolist()


# -- frozen -------------------------------------------------------------------------------


def test_frozen_trains_once_and_the_gallery_stays_at_generation_0():
    result = Simulator(tiny_scenario(method={"name": "frozen"}), write=False).run()
    train = _train_events(result)
    steps = [json.loads(d)["steps"] for d in train.detail]
    assert steps[0] > 0 and steps[1:] == [0, 0]
    assert _train_forwards(result)[1:] == [0, 0]  # no update, no training cost
    assert set(result.events[result.events.session > 0].generation) == {0}
    assert set(result.gallery.generation) == {0}


# -- unibct -------------------------------------------------------------------------------


def test_propagation_downweights_the_sample_the_new_model_sets_apart():
    # New model: samples 0 and 1 coincide, 2 is orthogonal to both. A (no self-loops, T 0.05) is then
    # [[0,1,0],[1,0,0],[.5,.5,0]] up to e^-20, and by hand the propagated mean is
    # ((1 + lambda/2)(e0 + e1) + (1 - lambda) e2) / 3.
    new = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=1)
    mean = propagate(E, new, temperature=0.05, lam=0.9).mean(dim=0)
    assert torch.allclose(mean, torch.tensor([1.45, 1.45, 0.1]) / 3, atol=1e-6)
    assert torch.allclose(propagate(E, new, temperature=0.05, lam=0.0).mean(dim=0), torch.full((3,), 1 / 3))


def test_refined_prototypes_per_row_and_which_rows_have_samples():
    new = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), dim=1)
    old = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    prototypes, present = refined_prototypes(old, new, torch.tensor([0, 0, 2, 2]), n_rows=3, temperature=0.05, lam=0.9)
    assert present.tolist() == [True, False, True]
    assert torch.allclose(prototypes[0], E[0]) and torch.allclose(prototypes[2], F.normalize(torch.tensor([0.0, 1.0, 1.0]), dim=0))


def test_unibct_influence_is_off_until_the_first_re_estimation_then_pulls_towards_the_prototype():
    method = build_method(tiny_scenario(method={"name": "unibct"}))
    model = _net([0, 1, 2])
    context = TrainContext(
        session=1, previous_weight=E.clone(), previous_known=torch.tensor([True, True, False]),
        previous_embeddings=torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]]), training_rows=torch.tensor([0, 0, 2]),
    )
    method.begin_session(model, context)
    embeddings = F.normalize(torch.tensor([[0.0, 1.0, 1.0]]), dim=1).requires_grad_(True)
    batch = Batch(inputs=None, rows=torch.tensor([0]), class_ids=torch.tensor([0]), embeddings=embeddings)
    assert method.loss(model, batch, context)["influence"].item() == 0.0
    calls = []

    def embed_training():
        calls.append(1)
        return F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [0.0, 0.0, 1.0]]), dim=1)

    method.after_step(model, fraction=0.1, context=context, embed_training=embed_training)
    assert method.refreshes == 0 and not calls
    method.after_step(model, fraction=0.35, context=context, embed_training=embed_training)
    assert method.refreshes == 1 and len(calls) == 1
    method.after_step(model, fraction=1.0, context=context, embed_training=embed_training)  # passes 0.6: once more
    assert method.refreshes == 2 and len(calls) == 2
    # Row 0's prototype: the mean of its two samples' old embeddings (two nodes: propagation keeps the mean).
    prototype = F.normalize(torch.tensor([0.9, 0.3, 0.0]), dim=0)
    assert torch.allclose(method._old_weight[0], prototype, atol=1e-6)
    influence = method.loss(model, batch, context)["influence"]
    assert influence.item() > 0
    influence.backward()
    assert float(-embeddings.grad[0] @ (prototype - embeddings[0].detach())) > 0


# -- nccl ---------------------------------------------------------------------------------


def test_consensus_contrastive_value_by_hand():
    # Anchor e0, keys e0 and e1 of its class (weights 0.5 (cos + 1) with its old embedding e0: 1 and 0.5), e2 of another.
    # Logits at T = 1: [1, 0, 0], so log p = [1 - L, -L, -L] with L = log(e + 2).
    anchor = E[:1].clone().requires_grad_(True)
    loss = consensus_contrastive(anchor, E[:1], torch.tensor([0]), E, torch.tensor([0, 0, 1]), temperature=1.0)
    big_l = math.log(math.e + 2)
    assert loss.item() == pytest.approx(-(1.0 * (1 - big_l) + 0.5 * -big_l) / 1.5, rel=1e-6)
    loss.backward()
    # A descent step raises the anchor's similarity to its positives over the negative.
    assert float(-anchor.grad[0] @ (E[1] - E[2])) > 0


def test_consensus_contrastive_leaves_out_anchors_without_positives():
    anchors = E[:2].clone()
    loss = consensus_contrastive(anchors, anchors, torch.tensor([0, 5]), E[:1], torch.tensor([0]), temperature=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # anchor 1 has no key of class 5; anchor 0's only key is its positive


def test_normalized_entropy_is_0_when_certain_and_1_when_uniform():
    values = normalized_entropy(torch.tensor([[0.0, 0.0, 0.0], [100.0, 0.0, 0.0]]))
    assert values[0].item() == pytest.approx(1.0) and values[1].item() == pytest.approx(0.0, abs=1e-6)


def test_nccl_queue_takes_only_credible_old_embeddings_and_keeps_its_size():
    method = build_method(tiny_scenario(method={"name": "nccl", "queue_size": 3}))
    model = _net([0, 1, 2])
    # Old embeddings: two sit on a class row (credible), one halfway between rows 0 and 1 (uncertain).
    old = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]), dim=1)
    context = TrainContext(session=1, previous_embed=lambda x: old, previous_weight=E.clone(), previous_known=torch.tensor([True, True, True]))
    method.begin_session(model, context)
    batch = Batch(inputs=None, rows=torch.tensor([0, 1, 0]), class_ids=torch.tensor([0, 1, 0]), embeddings=old.clone().requires_grad_(True))
    terms = method.loss(model, batch, context)
    assert set(terms) == {"ce", "feat", "logit"}
    assert len(method._queue) == 2 and torch.allclose(method._queue, old[:2])  # the uncertain third is left out
    method.loss(model, batch, context)
    assert len(method._queue) == 3  # capped at queue_size, newest first
    assert torch.allclose(method._queue, old[[0, 1, 0]])


# -- advbct -------------------------------------------------------------------------------


def test_point_to_sphere_pulls_only_from_outside():
    centres = torch.zeros(2, 2)
    embeddings = torch.tensor([[0.5, 0.0], [0.1, 0.0]], requires_grad=True)
    loss = point_to_sphere(embeddings, centres, torch.tensor([0.2, 0.2]), torch.tensor([True, True]))
    assert loss.item() == pytest.approx(0.3 / 2)  # (0.5 - 0.2) for the outside sample, 0 inside, over 2
    loss.backward()
    assert embeddings.grad[0, 0] > 0 and torch.all(embeddings.grad[1] == 0)  # descent moves it towards the centre


def test_gradient_reversal_and_the_discriminator_game():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    (reverse_gradient(x, 0.5) * torch.tensor([3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [-1.5, -2.0]
    discriminator = torch.nn.Linear(2, 1)
    with torch.no_grad():
        discriminator.weight.copy_(torch.tensor([[1.0, 0.0]]))
        discriminator.bias.zero_()
    new = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss = adversarial(discriminator, new, torch.tensor([[1.0, 0.0]]), coeff=1.0)
    expected = F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(0.0))  # BCE(1 -> old) + BCE(0 -> new)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    # The encoder's descent step makes the new embedding look more "old" to the discriminator...
    with torch.no_grad():
        assert float(discriminator(new - 0.1 * new.grad)) > float(discriminator(new))
    # ...while the discriminator's own gradient still lowers its loss.
    assert discriminator.weight.grad is not None and float(discriminator.bias.grad) != 0
    assert ramp(0.0) == 0.0 and 0.99 < ramp(1.0) < 1.0 and ramp(0.3) < ramp(0.6)


def test_advbct_steps_its_discriminator_itself():
    method = build_method(tiny_scenario(method={"name": "advbct"}))
    model = _net([0, 1])
    old = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 1.0, 0.0]]), dim=1)
    context = TrainContext(session=1, previous_embed=lambda x: old, previous_embeddings=old, training_rows=torch.tensor([0, 0, 1]))
    torch.manual_seed(0)
    method.begin_session(model, context)
    assert torch.allclose(method._radius, torch.tensor([float((old[0] - old[:2].mean(0)).norm()), 0.0]))
    before = [p.detach().clone() for p in method.discriminator.parameters()]
    batch = Batch(inputs=None, rows=torch.tensor([0, 0, 1]), class_ids=torch.tensor([0, 0, 1]), embeddings=E.clone().requires_grad_(True))
    sum(method.loss(model, batch, context).values()).backward()
    method.after_step(model, fraction=0.5, context=context, embed_training=lambda: None)
    assert any(not torch.equal(b, p) for b, p in zip(before, method.discriminator.parameters()))
    assert all(p.grad is None for p in method.discriminator.parameters())


# -- m2sd ---------------------------------------------------------------------------------


def test_cutmix_pastes_a_box_of_the_partner_and_returns_the_kept_share():
    x, partner = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    mixed, kept = cutmix(x, partner, 0.75, torch.Generator().manual_seed(0))
    assert kept == pytest.approx(0.75) and mixed.sum().item() == 16  # a 4x4 box


def test_mixed_ce_symmetric_kl_and_distillation_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.5]]))
    assert mixed_ce(logits, torch.tensor([0]), torch.tensor([1]), 0.3).item() == pytest.approx(math.log(2))
    other = torch.log(torch.tensor([[0.8, 0.2]]))
    by_hand = (0.5 - 0.8) * math.log(0.5 / 0.8) + (0.5 - 0.2) * math.log(0.5 / 0.2)  # KL(p||q) + KL(q||p)
    assert symmetric_kl(logits, other).item() == pytest.approx(by_hand, rel=1e-5)
    assert symmetric_kl(other, logits).item() == pytest.approx(by_hand, rel=1e-5)
    # Over a batch: the mean of the rows' values (row 2 by hand: p = (0.5, 0.5) against q = (0.25, 0.75)).
    row2 = (0.5 - 0.25) * math.log(0.5 / 0.25) + (0.5 - 0.75) * math.log(0.5 / 0.75)
    two = symmetric_kl(torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]])), torch.log(torch.tensor([[0.8, 0.2], [0.25, 0.75]])))
    assert two.item() == pytest.approx((by_hand + row2) / 2, rel=1e-5)
    student = torch.zeros(1, 2, requires_grad=True)
    teacher = torch.tensor([[2.0, 0.0]], requires_grad=True)
    distill(student, teacher).backward()
    assert student.grad[0, 0] < 0 < student.grad[0, 1]  # descent moves the student towards the teacher's class 0
    assert teacher.grad is None  # the teacher is held fixed


FEW_SHOT = {"setup": "few-shot", "sessions": 3, "initial_classes": 4, "ways": 2, "shots": 3, "query_fraction": 0.25}


def test_m2sd_few_shot_trains_the_base_session_then_adds_prototype_rows():
    scenario = tiny_scenario(stream=FEW_SHOT, method={"name": "m2sd"}, model={"width": 4})
    simulator = Simulator(scenario, write=False)
    result = simulator.run()
    train = _train_events(result)
    details = [json.loads(d) for d in train.detail]
    assert [d["steps"] > 0 for d in details] == [True, False, False]
    assert set(details[0]["loss"]) == {"ce", "virtual", "kl", "distill"}
    # Base session: the batch plus its MixUp and CutMix versions through the backbone.
    assert _train_forwards(result)[0] == 3 * details[0]["steps"] * 16
    assert set(result.events[result.events.session > 0].generation) == {0}
    assert set(result.gallery.generation) == {0}
    # Each few-shot class's row is its mean embedding by the (frozen) model.
    stream, model = simulator.stream, simulator.model
    for t in (1, 2):
        for c in stream[t].new_classes:
            ids = stream[t].train_ids[simulator.labels_of(stream[t].train_ids) == c]
            mean = F.normalize(torch.from_numpy(embed(model, simulator.images, ids, batch_size=64, amp=False)).mean(0), dim=0)
            row = model.rows_of(torch.tensor([int(c)]))[0]
            assert torch.allclose(model.weight[row].detach(), mean, atol=1e-5)



@pytest.mark.parametrize(
    "sections, expected",
    [
        ({"method": {"name": "m2sd"}, "stream": {"setup": "blurry", "sessions": 3, "initial_classes": 4, "classes_per_session": 4}}, "stream.setup"),
        ({"method": {"name": "m2sd", "attention_tokens": 5}}, "method.attention_tokens"),
        ({"method": {"name": "unibct", "refresh_at": [0.6, 0.3]}}, "method.refresh_at"),
    ],
)
def test_a_setup_the_method_cannot_serve_exits_2(tmp_path, capsys, sections, expected):
    path = str(write_scenario(tmp_path, tiny_dict(**sections)))
    assert main(["run", path, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


BLURRY = {"setup": "blurry", "sessions": 3, "initial_classes": 4, "classes_per_session": 4}


def test_setups_declare_whether_later_sessions_bring_known_classes_again():
    assert not SETUPS.get("disjoint").revisits_classes and not SETUPS.get("few-shot").revisits_classes
    assert all(SETUPS.get(name).revisits_classes for name in ("blurry", "iblurry", "general", "explicit", "stream-file"))


def test_methods_ask_the_setup_not_its_name(monkeypatch):
    m2sd = tiny_scenario(stream=BLURRY, method={"name": "m2sd"})
    with pytest.raises(ScenarioError, match="'blurry' stream brings more samples of known classes") as raised:
        METHODS.get("m2sd").check(m2sd)
    assert "'disjoint', 'few-shot'" in str(raised.value)  # the setups that fit, from the registry
    bct = tiny_scenario(method={"name": "bct", "synthesize_rows": False, "replay": False})
    with pytest.raises(ScenarioError, match="method.synthesize_rows"):
        METHODS.get("bct").check(bct)
    # Flip what the setups declare: the checks follow the declaration.
    monkeypatch.setattr(SETUPS.get("blurry"), "revisits_classes", False)
    monkeypatch.setattr(SETUPS.get("disjoint"), "revisits_classes", True)
    METHODS.get("m2sd").check(m2sd)
    METHODS.get("bct").check(bct)


def test_no_method_file_names_a_stream_setup():
    import cvstream.models.methods as methods

    for path in sorted(Path(methods.__file__).parent.glob("*.py")):
        text = path.read_text()
        named = [name for name in SETUPS.names() if f'"{name}"' in text or f"'{name}'" in text]
        assert not named, f"{path.name} names setups {named}: read SETUPS.get(scenario.stream.name) instead"
