"""Every registered method on a hand-made context; each method's own mechanics on hand-computed tensors."""

from __future__ import annotations

import copy
import math
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_dict, tiny_scenario, write_scenario
from cvstream.cli import main
from cvstream.models import METHODS, build_method
from cvstream.models.methods.base import NEEDS, Batch, TrainContext
from cvstream.models.net import EmbeddingNet
from cvstream.simulator import Simulator


def _default(name):
    cls = METHODS.get(name)
    return cls(cls.Params())


def test_methods_ask_only_for_what_the_engine_can_give():
    for name in METHODS.names():
        assert METHODS.get(name).needs <= NEEDS


@pytest.mark.parametrize("name", METHODS.names())
def test_training_samples_follow_what_the_method_needs(name):
    method = _default(name)
    arrivals, replay, seen = np.array([5, 6]), np.array([1, 2]), np.array([1, 2, 3, 5, 6])
    ids = method.training_ids(session_ids=arrivals, replay_ids=replay, seen_ids=seen if "seen_data" in method.needs else None)
    if "seen_data" in method.needs:
        expected = seen
    elif "replay" in method.needs:
        expected = np.concatenate([arrivals, replay])
    else:
        expected = arrivals
    assert ids.tolist() == expected.tolist()


def test_replay_flag_turns_the_buffer_off():
    method = build_method(tiny_scenario(method={"name": "bct", "replay": False}))
    assert "replay" not in method.needs and "replay" in METHODS.get("bct").needs
    assert method.training_ids(session_ids=np.array([5, 6]), replay_ids=np.array([1, 2])).tolist() == [5, 6]


def _session(method, session):
    """A tiny convnet after `session - 1` sessions, the session's training images and classes, and the context the
    engine would hand `method`, built from what it declares it needs."""
    torch.manual_seed(0)  # what the methods draw from the global RNG (m2sd's mixing, fresh modules), as the engine seeds it
    generator = torch.Generator().manual_seed(1)
    model = EmbeddingNet(backbone="convnet", in_channels=3, width=4, embedding_dim=16)
    model.add_classes([0, 1, 2], generator)
    images = torch.rand(12, 3, 16, 16, generator=generator) * 2 - 1
    classes = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 0, 3] if session else [0, 0, 1, 1, 2, 2] * 2)
    context = TrainContext(session=session)
    previous = None
    if session > 0 and method.needs & {"previous_model", "previous_embeddings"}:
        previous = copy.deepcopy(model).eval().requires_grad_(False)  # before the classifier grows, as the engine
    model.add_classes(classes.unique(), generator)
    if previous is not None:
        known = torch.isin(model.class_ids, previous.class_ids)
        weight = torch.zeros_like(model.weight.detach())
        weight[known] = F.normalize(previous.weight[previous.rows_of(model.class_ids[known])], dim=1)
        context.previous_embed, context.previous_weight, context.previous_known = previous, weight, known
        if "previous_embeddings" in method.needs:
            with torch.no_grad():
                context.previous_embeddings = previous(images)
            context.training_rows = model.rows_of(classes)
    if session > 0 and "class_means" in method.needs:  # classes 0-2 have stored gallery vectors from session 0
        context.old_rows = torch.isin(model.class_ids, torch.tensor([0, 1, 2]))
        context.class_means = torch.zeros(model.num_classes, model.embedding_dim)
        context.class_means[context.old_rows] = F.normalize(torch.randn(3, model.embedding_dim, generator=generator), dim=1)
    return model, images, classes, context


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_gives_its_declared_terms_finite_and_with_gradients(name):
    method = _default(name)
    trained = {}
    for session in (0, 1):
        model, images, classes, context = _session(method, session)
        model.train()
        method.begin_session(model, context)
        if not method.trains(session):
            continue
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        rows = model.rows_of(classes)

        def embed_training():
            with torch.no_grad():
                model.eval()
                out = model(images)
            model.train()
            return out

        for step, pick in enumerate((slice(0, 8), slice(4, 12))):
            batch = Batch(inputs=images[pick], rows=rows[pick], class_ids=classes[pick], embeddings=model(images[pick]))
            terms = method.loss(model, batch, context)
            assert "ce" in terms and set(terms) <= method.loss_terms, (session, sorted(terms))
            for term, value in terms.items():
                assert value.dim() == 0 and torch.isfinite(value) and value.requires_grad, (session, term)
            for term, mask in batch.covered.items():
                assert term in terms and mask.dtype == torch.bool and mask.shape == batch.rows.shape
            optimizer.zero_grad(set_to_none=True)
            sum(terms.values()).backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads) and any(bool(g.any()) for g in grads)
            optimizer.step()
            method.after_step(model, fraction=(step + 1) / 2, context=context, embed_training=embed_training)
        trained[session] = set(terms)
    assert trained, "the method trains in neither session"
    # Once it has what it needs (session 1, or session 0 where only the base session trains): every declared term.
    assert trained[max(trained)] == method.loss_terms


def _net(classes, dim=2):
    net = EmbeddingNet(backbone="mlp", in_channels=3, width=4, embedding_dim=dim)
    net.add_classes(classes, torch.Generator().manual_seed(0))
    return net


def _set_rows(model, rows):
    with torch.no_grad():
        model.weight.copy_(torch.tensor(rows))


def _softmax(logits):
    e = [math.exp(v) for v in logits]
    return [v / sum(e) for v in e]


def _ce(logits, target):
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def test_bct_synthesises_rows_for_classes_the_old_classifier_never_saw():
    method = build_method(tiny_scenario(method={"name": "bct", "temperature": 0.5, "weight": 2.0}))
    model = _net([5, 7, 9])
    context = TrainContext(
        session=1,
        previous_weight=torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]),
        previous_known=torch.tensor([True, False, False]),
        previous_embeddings=torch.tensor([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]]),
        training_rows=torch.tensor([1, 1, 0]),
    )
    method.begin_session(model, context)
    # Row 1 (class 7): the normalised mean of its old embeddings, (1, 3) / sqrt(10); row 2 (class 9) has no sample: no row.
    assert torch.allclose(method._old_weight[1], torch.tensor([1.0, 3.0]) / math.sqrt(10))
    assert method._valid.tolist() == [True, True, False]
    embeddings = torch.tensor([[0.6, 0.8], [0.0, 1.0]], requires_grad=True)
    batch = Batch(inputs=None, rows=torch.tensor([1, 2]), class_ids=torch.tensor([7, 9]), embeddings=embeddings)
    terms = method.loss(model, batch, context)
    # Only the class-7 sample, through the old classifier's two rows at T = 0.5: logits (1.2, 3 / sqrt(10) / 0.5).
    assert terms["influence"].item() == pytest.approx(2.0 * _ce([1.2, 3.0 / math.sqrt(10) / 0.5], 1), rel=1e-6)
    assert batch.covered["influence"].tolist() == [True, False]
    terms["influence"].backward()
    assert embeddings.grad[0].abs().sum() > 0 and torch.all(embeddings.grad[1] == 0)  # class 9 is left out


def test_lwf_distils_the_old_logits_over_the_old_classes_only():
    model = _net([0, 1, 2])
    _set_rows(model, [[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # class 2 is new: the old generation has no logit for it
    method = build_method(tiny_scenario(method={"name": "lwf", "temperature": 0.5, "distill_temperature": 2.0}))
    old = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    context = TrainContext(
        session=1, previous_embed=lambda x: old,
        previous_weight=torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), previous_known=torch.tensor([True, True, False]),
    )
    new = torch.tensor([[1.0, 0.0], [0.8, 0.6]], requires_grad=True)
    batch = Batch(inputs=None, rows=torch.tensor([0, 2]), class_ids=torch.tensor([0, 2]), embeddings=new)
    # Logits over classes 0 and 1 at T = 0.5, then softened by T = 2: teacher (0.6, 0.8) and (1, 0), student (1, 0) and (0.8, 0.6).
    by_hand = 0.0
    for teacher, student in (([0.6, 0.8], [1.0, 0.0]), ([1.0, 0.0], [0.8, 0.6])):
        p, q = _softmax(teacher), _softmax(student)
        by_hand += sum(pk * math.log(pk / qk) for pk, qk in zip(p, q)) / 2
    distill = method.loss(model, batch, context)["distill"]
    assert distill.item() == pytest.approx(4 * by_hand, rel=1e-5)  # times T^2
    distill.backward()
    assert float(-new.grad[0] @ torch.tensor([-1.0, 1.0])) > 0  # the first sample moves towards the teacher's class 1


def test_mixbct_trains_the_classifier_on_old_embeddings_of_credible_samples():
    model = _net([0, 1])
    _set_rows(model, [[1.0, 0.0], [0.0, 1.0]])
    method = build_method(
        tiny_scenario(method={"name": "mixbct", "mix_ratio": 0.5, "credible_fraction": 0.5, "temperature": 1.0})
    )
    # Class 0's old mean is (0.6, 0.53); the median distance to it, (1, 0)'s 0.667, is its credible radius.
    training_old = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.0, 1.0], [0.6, 0.8]])
    batch_old = torch.tensor([[0.0, 1.0], [0.8, 0.6], [0.28, 0.96], [0.6, 0.8]])
    context = TrainContext(
        session=1, previous_embed=lambda x: batch_old, previous_embeddings=training_old, training_rows=torch.tensor([0, 0, 0, 1, 1])
    )
    method.begin_session(model, context)
    new = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0], [0.28, 0.96]], requires_grad=True)
    batch = Batch(inputs=None, rows=torch.tensor([0, 0, 1, 1]), class_ids=torch.tensor([0, 0, 1, 1]), embeddings=new)
    loss = method.loss(model, batch, context)["ce"]
    # Sample 0's old embedding lies outside class 0's radius; samples 1 and 2 are credible and fill the quota of
    # 2 (half the batch), so sample 3 keeps its new embedding. The classifier sees (0.6, 0.8), (0.8, 0.6), (0.28, 0.96) twice.
    by_hand = (_ce([0.6, 0.8], 0) + _ce([0.8, 0.6], 0) + 2 * _ce([0.28, 0.96], 1)) / 4
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    loss.backward()
    assert torch.all(new.grad[1:3] == 0) and new.grad[0].abs().sum() > 0 and new.grad[3].abs().sum() > 0


def test_at_most_two_generations_live_during_training(monkeypatch):
    live = weakref.WeakSet()
    live_at_copy = []
    real_deepcopy = copy.deepcopy

    def counting_deepcopy(obj, *args, **kwargs):
        if not isinstance(obj, EmbeddingNet):
            return real_deepcopy(obj, *args, **kwargs)
        live.add(obj)
        live_at_copy.append(len(live))
        out = real_deepcopy(obj, *args, **kwargs)
        live.add(out)
        return out

    monkeypatch.setattr(copy, "deepcopy", counting_deepcopy)
    Simulator(tiny_scenario(method={"name": "l2"}), write=False).run()
    # When the current model is copied into the previous generation, the older one is already gone.
    assert live_at_copy == [1, 1]



@pytest.mark.parametrize(
    "method, replay, expected",
    [
        ({"name": "bct", "synthesize_rows": False, "replay": False}, {}, "method.synthesize_rows"),
        ({"name": "bct", "synthesize_rows": False}, {"size": 0}, "never sees a class the old classifier knows"),
        ({"name": "mixbct", "mix_ratio": 0.01}, {}, "method.mix_ratio"),
    ],
)
def test_method_the_setup_cannot_serve_exits_2(tmp_path, capsys, method, replay, expected):
    path = str(write_scenario(tmp_path, tiny_dict(method=method, replay=replay)))
    assert main(["run", path, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_validate_runs_the_method_checks(tmp_path, capsys):
    path = str(write_scenario(tmp_path, tiny_dict(method={"name": "bct", "synthesize_rows": False, "replay": False})))
    assert main(["validate", path]) == 2
    assert "method.synthesize_rows" in capsys.readouterr().err


def test_backbone_that_does_not_fit_the_data_exits_2(tmp_path, capsys):
    path = str(write_scenario(tmp_path, tiny_dict(model={"backbone": "mlp"})))
    assert main(["run", path, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "takes vectors" in capsys.readouterr().err
