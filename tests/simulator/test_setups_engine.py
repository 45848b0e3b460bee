"""The engine on every stream setup: recurring classes, exemplars that arrive again, L_d on leaked
classes, herding on the current generation, validation that never matches a query to itself, honest counts."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_scenario
from cvstream.simulator import Simulator

BLURRY_EVERYWHERE = {"setup": "blurry", "sessions": 3, "initial_classes": 4, "classes_per_session": 4, "blurry_ratio": 0.5,
                     "query_fraction": 0.25}
SETUPS = {
    "blurry": BLURRY_EVERYWHERE,
    "iblurry": {"setup": "iblurry", "sessions": 3, "initial_classes": 4, "classes_per_session": 4, "blurry_ratio": 0.3,
                "disjoint_class_ratio": 0.5, "query_fraction": 0.25},
    "general": {"setup": "general", "sessions": 3, "initial_classes": 4, "classes_per_session": 4, "old_ratio": 0.3,
                "query_fraction": 0.25},
}


def train_details(result) -> dict[int, dict]:
    events = result.events[result.events.kind == "train"]
    return {int(s): json.loads(d) for s, d in zip(events.session, events.detail)}


@functools.cache
def run_of(name: str):
    return Simulator(tiny_scenario(stream=SETUPS[name], training={"epochs": 2, "batch_size": 8}), write=False).run()


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_every_setup_runs_end_to_end(name):
    result = run_of(name)
    stream = result.stream
    gallery = result.gallery
    for t in range(3):
        arrived = stream[(stream.role == "gallery") & (stream.session <= t)].sample_id
        assert sorted(gallery[gallery.session_added <= t].sample_id) == sorted(arrived)  # every arrival is indexed once
    recurring = stream[(stream.role == "train") & (stream.session != stream.home_session)]
    assert len(recurring) > 0, f"{name}: no class arrives outside its home session"  # the setup's point
    r1 = result.metrics.query("metric == 'recall@1' and gallery_view == 'mixed' and subset == 'all'")
    assert sorted(r1.session) == [0, 1, 2] and r1.value.between(0, 1).all()
    details = train_details(result)
    for t in (1, 2):
        terms = details[t]["term_samples"]
        trained = details[t]["steps"] * 8
        assert set(terms) == {"ce", "triplet", "class_mean"} and terms["ce"] == trained
        assert 0 < terms["class_mean"] <= trained
        assert details[t]["replay_samples"] > 0  # exemplars of earlier sessions, some of whose classes arrive again


def test_class_mean_term_covers_leaked_classes_on_blurry_streams():
    """Blurry: every class is in session 0, so from session 1 on every training sample has stored gallery vectors."""
    result = run_of("blurry")
    stream = result.stream
    first = stream[(stream.role == "gallery") & (stream.session == 0)]
    assert set(first.class_id) == set(stream.class_id)  # the premise: every class already in session 0
    details = train_details(result)
    for t in (1, 2):
        assert details[t]["term_samples"]["class_mean"] == details[t]["term_samples"]["ce"] > 0


def test_herding_runs_on_the_current_generation_and_is_billed():
    """The buffer's stored embeddings are the final model's, old exemplars included (re-embedded, as the CVS code
    does), and those forwards are the `replay` phase's."""
    from cvstream.models.trainer import embed

    sim = Simulator(tiny_scenario(stream={"sessions": 2}), write=False)
    result = sim.run()
    replay_costs = result.costs[result.costs.phase == "replay"].set_index("session")
    assert replay_costs.backbone_forwards.to_dict() == {0: 0, 1: 24}  # 6 exemplars of each of session 0's 4 classes
    held = sim.replay.class_samples()
    assert any(sim.stream.home_of(np.array([c]))[0] == 0 for c in held)  # old classes are still in the buffer
    stored = np.concatenate([sim.replay._vectors[c] for c in sorted(held)])
    fresh = embed(sim.model, sim.images, np.concatenate([held[c] for c in sorted(held)]), batch_size=64, amp=False)
    np.testing.assert_allclose(stored, fresh, atol=1e-5)


def test_validation_queries_are_the_sessions_held_out_samples_never_arrivals_or_exemplars(monkeypatch):
    from cvstream.simulator import engine

    captured = {}
    original = engine.Simulator._validator

    def spy(self, val_ids, session):
        validate, forwards = original(self, val_ids, session)
        captured[session] = (val_ids.copy(), self.replay.sample_ids().copy(), self.stream[session].train_ids.copy())
        return validate, forwards

    monkeypatch.setattr(engine.Simulator, "_validator", spy)
    scenario = tiny_scenario(stream=SETUPS["general"], training={"epochs": 2, "batch_size": 8, "validation_fraction": 0.25})
    sim = Simulator(scenario, write=False)
    result = sim.run()
    assert set(captured) == {0, 1, 2}
    for t, (val_ids, replay_ids, arrivals) in captured.items():
        assert np.array_equal(val_ids, sim.stream[t].val_ids)
        assert not np.isin(val_ids, arrivals).any() and not np.isin(val_ids, replay_ids).any()
    details = train_details(result)
    for t in (1, 2):
        assert len(details[t]["validation_r1"]) == 2


def test_validator_gallery_holds_no_validation_query():
    """A model that maps every image to one vector ties everything: a self-match would be the only way to score."""
    scenario = tiny_scenario(training={"epochs": 1, "validation_fraction": 0.25})
    sim = Simulator(scenario, write=False)
    sim._prepare()
    session = sim.stream[0]
    val_ids = session.val_ids
    assert len(val_ids) and not np.intersect1d(val_ids, session.gallery_ids).size
    validate, forwards = sim._validator(val_ids, 0)
    assert forwards == len(session.gallery_ids) + len(val_ids)

    class RandomPerImage(torch.nn.Module):  # a random vector per image: only the image itself is near it
        embedding_dim = 32

        def forward(self, x):
            seeds = (x.flatten(1).double().sum(1) * 1e4).long().tolist()
            return torch.stack([torch.randn(32, generator=torch.Generator().manual_seed(s)) for s in seeds])

    from cvstream.models.trainer import embed

    gallery_ids = session.gallery_ids
    g = embed(RandomPerImage(), sim.images, gallery_ids, batch_size=64, amp=False)
    q = embed(RandomPerImage(), sim.images, val_ids, batch_size=64, amp=False)
    expected = np.mean(sim.labels_of(gallery_ids)[np.argmax(q @ g.T, axis=1)] == sim.labels_of(val_ids))
    assert validate(RandomPerImage()) == pytest.approx(expected)
    assert expected < 0.8  # with the queries themselves in the gallery every one would score 1
