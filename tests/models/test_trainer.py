"""The trainer: best-epoch selection, float (feature) inputs, the schedule, and a diverging loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_scenario
from cvstream.models.methods import METHODS, TrainContext
from cvstream.models.net import EmbeddingNet
from cvstream.models.trainer import TrainingDiverged, learning_rate, to_input, train_session
from cvstream.scenario import TrainingSpec
from cvstream.simulator import Simulator
from cvstream.simulator.run import load_run


def _features(n=64, dim=6, classes=4):
    g = torch.Generator().manual_seed(0)
    labels = np.arange(n) % classes
    centres = torch.randn(classes, dim, generator=g) * 3
    x = centres[labels] + torch.randn(n, dim, generator=g)
    return x, labels


def _mlp(dim=6, classes=4):
    torch.manual_seed(0)
    model = EmbeddingNet(backbone="mlp", in_channels=dim, width=4, embedding_dim=8)
    model.add_classes(list(range(classes)), torch.Generator().manual_seed(0))
    return model


def _train(model, x, labels, *, epochs, validate=None):
    finetune = METHODS.get("finetune")(METHODS.get("finetune").Params())
    return train_session(
        model=model, method=finetune, images=x, sample_ids=np.arange(len(x)), class_ids=labels,
        context=TrainContext(session=0), spec=TrainingSpec(epochs=epochs, batch_size=16, lr=0.1, warmup_epochs=0),
        generator=torch.Generator().manual_seed(1), augment_images=True, flip=True, validate=validate,
    )


def test_float_inputs_pass_unscaled_and_train_an_mlp():
    x, labels = _features()
    assert torch.equal(to_input(x), x)
    assert to_input(torch.tensor([[0, 255]], dtype=torch.uint8)).tolist() == [[-1.0, 1.0]]
    stats = _train(_mlp(), x, labels, epochs=3)
    assert stats.steps == 12 and np.isfinite(stats.last_terms["ce"])


def test_best_epoch_weights_are_kept():
    x, labels = _features()
    model = _mlp()
    scores = iter([0.2, 0.9, 0.1])
    snapshots = []

    def validate(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scores)

    stats = _train(model, x, labels, epochs=3, validate=validate)
    assert stats.best_epoch == 1 and stats.validation == [0.2, 0.9, 0.1]
    kept = model.state_dict()
    assert all(torch.equal(kept[k], snapshots[1][k]) for k in kept)
    assert not torch.equal(kept["weight"], snapshots[2]["weight"])


def test_validation_split_runs_in_the_engine():
    scenario = tiny_scenario(training={"epochs": 2, "validation_fraction": 0.25}, stream={"sessions": 2}, method={"name": "finetune"})
    result = Simulator(scenario, write=False).run()
    details = [json.loads(d) for d in result.events[result.events.kind == "train"].detail]
    assert all(len(d["validation_r1"]) == 2 and d["best_epoch"] in (0, 1) for d in details)
    arrivals = int(((result.stream.role == "train") & (result.stream.session == 0)).sum())
    per_class = arrivals // 4  # session 0 brings 4 classes
    assert details[0]["training_samples"] == arrivals - 4 * int(per_class * 0.25)  # the held-out share is not trained on


def test_warm_restart_schedule():
    kwargs = dict(lr=0.1, warmup_epochs=1, warmup_factor=0.1, period=1, mult=2, min_ratio=0.01)
    assert learning_rate(0.5, **kwargs) == pytest.approx(0.01)  # warm-up at lr/10
    assert learning_rate(1.0, **kwargs) == pytest.approx(0.1)  # first cycle starts at lr
    assert learning_rate(1.5, **kwargs) == pytest.approx(0.001 + 0.099 * 0.5)  # half-way down a 1-epoch cycle
    assert learning_rate(2.0, **kwargs) == pytest.approx(0.1)  # restart; the next cycle lasts 2 epochs
    assert learning_rate(3.0, **kwargs) == pytest.approx(0.001 + 0.099 * 0.5)


def test_nan_loss_names_term_and_step_and_earlier_sessions_stay_readable(tmp_path):
    scenario = tiny_scenario(method={"name": "l2"})
    sim = Simulator(scenario, out_dir=tmp_path / "run")
    real_loss = sim.method.loss

    def poisoned(model, batch, context):
        terms = real_loss(model, batch, context)
        if context.session == 1:
            terms["l2"] = terms["l2"] * float("nan")
        return terms

    sim.method.loss = poisoned
    with pytest.raises(TrainingDiverged, match=r"session 1, step 1: loss term 'l2' is nan"):
        sim.run()
    run = load_run(tmp_path / "run")
    assert run.status == "failed"
    assert sorted(run.metrics.session.unique()) == [0]
    assert set(run.gallery.session_added) == {0}
    assert not run.metrics.value.isna().any()


@pytest.mark.slow
def test_cpu_training_is_deterministic_for_a_seed():
    def run(seed):
        sim = Simulator(tiny_scenario(seed=seed, stream={"sessions": 2}, method={"name": "cvs"}), write=False)
        result = sim.run()
        return result.metrics.value.to_numpy(), sim.gallery.vectors(np.arange(len(sim.gallery)))

    (m1, g1), (m2, g2), (_, g3) = run(3), run(3), run(4)
    assert np.array_equal(m1, m2, equal_nan=True) and np.array_equal(g1, g2)
    assert not np.array_equal(g1, g3)
