"""Every method runs two sessions; each method's own mechanics on hand-made tensors."""

from __future__ import annotations

import copy
import weakref

import numpy as np
import pytest
import torch

from conftest import tiny_dict, tiny_scenario, write_scenario
from cvstream.cli import main
from cvstream.models import METHODS, build_method
from cvstream.models.methods.base import NEEDS, Batch, TrainContext
from cvstream.models.net import EmbeddingNet
from cvstream.simulator import Simulator

# The loss terms each method must produce once a previous generation exists.
TERMS = {
    "finetune": {"ce"},
    "joint": {"ce"},
    "cvs": {"ce", "triplet", "class_mean"},
    "bct": {"ce", "influence"},
    "l2": {"ce", "l2"},
    "l2-weakened": {"ce", "l2"},
    "lwf": {"ce", "distill"},
    "mixbct": {"ce"},
    # Issue 9 (tests/models/test_methods_more.py has their own mechanics); frozen and m2sd take no step after session 0.
    "frozen": set(),
    "unibct": {"ce", "influence"},
    "nccl": {"ce", "feat", "logit"},
    "advbct": {"ce", "p2s", "adv"},
    "m2sd": set(),
}


def _two_sessions(name, **sections):
    sections.setdefault("method", {"name": name})
    scenario = tiny_scenario(stream={"sessions": 2}, **sections)
    return Simulator(scenario, write=False).run()


def _train_details(result):
    events = result.events
    return [eval_detail(d) for d in events[events.kind == "train"].detail]


def eval_detail(text):
    import json

    return json.loads(text)


def test_methods_ask_only_for_what_the_engine_can_give():
    for name in METHODS.names():
        assert METHODS.get(name).needs <= NEEDS


@pytest.mark.parametrize("name", sorted(TERMS))
def test_method_runs_two_sessions(name):
    result = _two_sessions(name)
    details = _train_details(result)
    assert len(details) == 2
    assert set(details[1]["loss"]) == TERMS[name]
    assert all(np.isfinite(v) for v in details[1]["loss"].values())
    assert (details[1]["replay_samples"] > 0) == ("replay" in METHODS.get(name).needs)
    trained = result.stream[result.stream.role == "train"]
    arrivals = [int((trained.session == t).sum()) for t in (0, 1)]
    # joint trains on everything seen so far; the others on the arrivals (plus the buffer).
    expected = arrivals[0] + arrivals[1] if name == "joint" else arrivals[1] + details[1]["replay_samples"]
    assert details[1]["training_samples"] == expected
    r1 = result.recall_table(1)
    assert list(r1.index) == [0, 1] and r1["all"].between(0, 1).all()


def test_replay_flag_turns_the_buffer_off():
    without = _train_details(_two_sessions("bct", method={"name": "bct", "replay": False}))[1]
    assert without["replay_samples"] == 0 and set(without["loss"]) == {"ce", "influence"}


def _net(classes, dim=2):
    net = EmbeddingNet(backbone="mlp", in_channels=3, width=4, embedding_dim=dim)
    net.add_classes(classes, torch.Generator().manual_seed(0))
    return net


def test_bct_synthesises_rows_for_classes_the_old_classifier_never_saw():
    method = build_method(tiny_scenario(method={"name": "bct"}))
    model = _net([5, 7, 9])
    context = TrainContext(
        session=1,
        previous_weight=torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]),
        previous_known=torch.tensor([True, False, False]),
        previous_embeddings=torch.tensor([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]]),
        training_rows=torch.tensor([1, 1, 0]),
    )
    method.begin_session(model, context)
    # Row 1 (class 7): the normalised mean of its old embeddings; row 2 (class 9) has no sample: no row.
    expected = torch.nn.functional.normalize(torch.tensor([[0.3, 0.9]]), dim=1)[0]
    assert torch.allclose(method._old_weight[1], expected)
    assert method._valid.tolist() == [True, True, False]
    embeddings = torch.tensor([[0.0, 1.0]], requires_grad=True)
    terms = method.loss(model, Batch(inputs=None, rows=torch.tensor([2]), class_ids=torch.tensor([9]), embeddings=embeddings), context)
    assert terms["influence"].item() == 0.0  # no old row for class 9: the sample is left out


def test_lwf_distillation_is_zero_before_the_model_moves():
    torch.manual_seed(0)
    model = _net([0, 1, 2], dim=4)
    previous = _net([0, 1], dim=4)
    previous.load_state_dict({k: v[:2] if k in ("weight", "class_ids") else v for k, v in model.state_dict().items()})
    previous.eval(), model.eval()
    method = build_method(tiny_scenario(method={"name": "lwf"}))
    x = torch.randn(6, 3)
    context = TrainContext(
        session=1, previous_embed=previous,
        previous_weight=torch.cat([torch.nn.functional.normalize(previous.weight.detach(), dim=1), torch.zeros(1, 4)]),
        previous_known=torch.tensor([True, True, False]),
    )
    batch = Batch(inputs=x, rows=torch.tensor([0, 1, 2, 0, 1, 2]), class_ids=torch.tensor([0, 1, 2, 0, 1, 2]), embeddings=model(x))
    assert method.loss(model, batch, context)["distill"].item() == pytest.approx(0.0, abs=1e-6)


def test_mixbct_trains_the_classifier_on_old_embeddings_of_credible_samples():
    model = _net([0, 1])
    method = build_method(tiny_scenario(method={"name": "mixbct", "mix_ratio": 1.0, "credible_fraction": 0.5}))
    old = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    context = TrainContext(session=1, previous_embed=lambda x: old, previous_embeddings=old, training_rows=torch.tensor([0, 0, 1, 1]))
    method.begin_session(model, context)
    new = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    batch = Batch(inputs=None, rows=torch.tensor([0, 0, 1, 1]), class_ids=torch.tensor([0, 0, 1, 1]), embeddings=new)
    loss = method.loss(model, batch, context)["ce"]
    # Each class's two old vectors are equally far from its mean: the 50% quantile keeps both.
    expected = torch.nn.functional.cross_entropy(model.cosine(old) / 0.05, batch.rows)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert new.grad is None or torch.all(new.grad == 0)  # every embedding was replaced


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
