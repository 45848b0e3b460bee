"""Held-out validation samples are never trained on, never in the replay buffer and never in the gallery."""

from __future__ import annotations

import numpy as np
import pytest

from cvstream.simulator import Simulator, engine
from conftest import tiny_scenario

SETUPS = {
    "disjoint": {"setup": "disjoint"},
    "blurry": {"setup": "blurry", "blurry_ratio": 0.2},
    "general": {"setup": "general", "old_ratio": 0.3},
    "few-shot": {"setup": "few-shot", "initial_classes": 4, "ways": 4, "shots": 5},
}
METHODS = {"cvs": {"name": "cvs"}, "joint": {"name": "joint"}, "mixbct": {"name": "mixbct"}}


@pytest.mark.parametrize("validate_on", ["session", "seen"])
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_validation_samples_are_never_trained_replayed_or_indexed(setup, method, validate_on, monkeypatch):
    sizes = {} if setup == "few-shot" else {"initial_classes": 4, "classes_per_session": 4}
    stream = {"sessions": 3, "query_fraction": 0.25, **sizes, **SETUPS[setup]}
    scenario = tiny_scenario(
        stream=stream, method=METHODS[method], replay={"size": 24, "selection": "herding"},
        training={"validation_fraction": 0.2, "validate_on": validate_on},
    )
    trained, validated = [], []
    real_train = engine.train_session

    def recording(**kwargs):
        trained.append(np.asarray(kwargs["sample_ids"]))
        return real_train(**kwargs)

    monkeypatch.setattr(engine, "train_session", recording)
    sim = Simulator(scenario, write=False)
    real_validator = sim._validator
    monkeypatch.setattr(sim, "_validator", lambda val_ids, t: (validated.append(val_ids), real_validator(val_ids, t))[1])
    with sim.running():
        for t in range(len(sim.stream)):
            sim.run_session(t)
            held = sim.stream.val_ids(t, seen=True)
            assert len(held) > 0
            assert not np.isin(trained[-1], held).any(), "a validation sample was trained on"
            assert not np.isin(sim.replay.sample_ids(), held).any(), "a validation sample is in the replay buffer"
            assert not np.isin(sim.gallery.metadata().sample_id.to_numpy(), held).any(), "a validation sample is a gallery item"
            expected = sim.stream.val_ids(t, seen=validate_on == "seen")
            assert np.array_equal(np.sort(validated[-1]), np.sort(expected))
    frame = sim.stream.to_frame()
    assert set(frame[frame.role == "val"].sample_id) == set(np.concatenate([s.val_ids for s in sim.stream]).tolist())
