"""The trainer: best-epoch selection, float (feature) inputs, the schedule, and a diverging loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_scenario
from cvstream.models.augment import channel_stats
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
    first = result.stream[result.stream.session == 0]
    trained, held = int((first.role == "train").sum()), int((first.role == "val").sum())
    per_class = (trained + held) // 4  # session 0 brings 4 classes, each its arrivals split
    assert held == 4 * int(per_class * 0.25)
    assert details[0]["training_samples"] == trained  # the held-out share is not trained on


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


@pytest.mark.parametrize("every, expected", [("step", [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]), ("epoch", [0.0, 0.0, 1.0, 1.0, 2.0, 2.0])])
def test_the_schedule_is_set_every_step_or_at_whole_epochs(every, expected, monkeypatch):
    import cvstream.models.trainer as trainer

    seen = []
    monkeypatch.setattr(trainer, "learning_rate", lambda epoch, **kw: seen.append(epoch) or learning_rate(epoch, **kw))
    x, labels = _features(n=32)
    finetune = METHODS.get("finetune")(METHODS.get("finetune").Params())
    train_session(
        model=_mlp(), method=finetune, images=x, sample_ids=np.arange(len(x)), class_ids=labels, context=TrainContext(session=0),
        spec=TrainingSpec(epochs=3, batch_size=16, lr_every=every), generator=torch.Generator().manual_seed(1),
        augment_images=False, flip=False,
    )
    assert seen == expected
    # at whole epochs the CVS loop's rates: lr/10, lr, lr, lr/2 + eta_min/2, lr, ...
    rates = [learning_rate(e, lr=0.03, warmup_epochs=1, warmup_factor=0.1, period=1, mult=2, min_ratio=0.01) for e in range(6)]
    assert rates == pytest.approx([0.003, 0.03, 0.03, 0.01515, 0.03, 0.0003 + 0.0297 * (1 + np.cos(np.pi / 4)) / 2])


def test_input_scaling_normalises_by_the_data_sets_mean_and_std():
    torch.manual_seed(0)
    stats = ([0.2, 0.4, 0.6], [0.5, 0.25, 0.1])
    scaled = EmbeddingNet(backbone="convnet", in_channels=3, width=4, embedding_dim=8, input_stats=stats).eval()
    torch.manual_seed(0)
    plain = EmbeddingNet(backbone="convnet", in_channels=3, width=4, embedding_dim=8).eval()
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in stats)
    assert torch.allclose(scaled(to_input(pixels)), plain((pixels / 255 - mean) / std), atol=1e-5)
    assert scaled.spec["input_stats"] == [stats[0], stats[1]] and "input_stats" not in plain.spec


def test_mean_std_scaling_in_a_run_measures_the_images_and_survives_an_upgrade():
    scenario = tiny_scenario(training={"input_scaling": "mean-std"}, stream={"sessions": 2}, method={"name": "finetune"},
                             model={"upgrades": {1: {"backbone": "convnet", "embedding_dim": 16, "width": 6}}})
    sim = Simulator(scenario, write=False)
    with sim.running():
        stats = sim.model.spec["input_stats"]
        assert stats[0] == pytest.approx(channel_stats(sim.images.numpy())[0])
        for t in range(2):
            sim.run_session(t)
        assert sim.model.spec["width"] == 6 and sim.model.spec["input_stats"] == stats


def test_uniform_classifier_rows_are_short_as_the_cvs_codes():
    net = EmbeddingNet(backbone="mlp", in_channels=6, width=4, embedding_dim=128)
    net.add_classes(list(range(200)), torch.Generator().manual_seed(0), init="uniform")
    assert net.weight.abs().max() <= 128**-0.5 and net.weight.norm(dim=1).mean().item() == pytest.approx(1 / 3**0.5, abs=0.02)
    net.add_classes(list(range(200, 400)), torch.Generator().manual_seed(0))
    assert net.weight[200:].norm(dim=1).mean().item() == pytest.approx(1.0, abs=0.05)


def test_a_training_seed_keeps_the_stream_and_changes_the_training():
    base = Simulator(tiny_scenario(stream={"sessions": 1}), write=False).run()
    same = Simulator(tiny_scenario(stream={"sessions": 1}, training={"seed": 3}), write=False).run()  # the scenario's seed is 3
    other = Simulator(tiny_scenario(stream={"sessions": 1}, training={"seed": 4}), write=False).run()
    assert base.stream.equals(other.stream)
    assert base.metrics.equals(same.metrics)
    assert not base.metrics.value.equals(other.metrics.value)
