"""Checkpoint pieces: every gallery index type survives save/load with its class sums, the replay buffer its state, exactly;
a resumed run state equals, field by field, the state of the run that saved it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dataclasses

from conftest import tiny_scenario
from cvstream.evaluation.evaluator import Evaluator
from cvstream.gallery import Gallery, ReplayBuffer
from cvstream.scenario import GallerySpec
from cvstream.simulator import Simulator, checkpoint
from cvstream.simulator.checkpoint import load_model_state
from cvstream.simulator.state import RunState


def _unit(rng, n, dim=16):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("segment_size", [131_072, 250])
@pytest.mark.parametrize("index", ["flat", "ivf", "ivfpq", "hnsw"])
def test_gallery_round_trip_searches_the_same(index, segment_size, tmp_path):
    rng = np.random.default_rng(0)
    spec = GallerySpec(index=index, nlist=4, nprobe=2, pq_m=4, pq_bits=4, gpu=False, segment_size=segment_size)
    gallery = Gallery(16, spec, seed=1)
    for session in range(2):
        vectors = _unit(rng, 300)
        gallery.add(vectors, sample_ids=np.arange(300) + 300 * session, class_ids=rng.integers(0, 7, 300), session=session, generation=session)
    gallery.replace(np.array([3, 290, 599]), _unit(rng, 3), session=1, generation=1)  # running sums after a subtraction
    gallery.save(tmp_path)  # what a checkpoint keeps: the saved gallery and the running class sums
    restored = Gallery.load(tmp_path, class_sums=gallery.class_sums())
    queries = _unit(rng, 20)
    for a, b in zip(gallery.search(queries, 5), restored.search(queries, 5)):
        np.testing.assert_array_equal(a, b)
    assert restored.metadata().equals(gallery.metadata()) and restored.describe() == gallery.describe()
    np.testing.assert_array_equal(restored.class_means(np.arange(7))[0], gallery.class_means(np.arange(7))[0])
    more = _unit(rng, 10)  # and it keeps growing as the original would
    gallery.add(more, sample_ids=np.arange(10) + 900, class_ids=np.zeros(10, np.int64), session=2, generation=2)
    restored.add(more, sample_ids=np.arange(10) + 900, class_ids=np.zeros(10, np.int64), session=2, generation=2)
    assert restored.metadata().equals(gallery.metadata())
    np.testing.assert_array_equal(restored.class_means(np.arange(7))[0], gallery.class_means(np.arange(7))[0])


def test_class_sums_of_another_gallery_are_refused(tmp_path):
    from cvstream.errors import UserError

    gallery = Gallery(16, GallerySpec(gpu=False))
    gallery.add(_unit(np.random.default_rng(0), 10), sample_ids=np.arange(10), class_ids=np.arange(10) % 3, session=0, generation=0)
    gallery.save(tmp_path)
    sums, counts = gallery.class_sums()
    with pytest.raises(UserError, match="class sums do not match"):
        Gallery.load(tmp_path, class_sums=(sums, counts + 1))
    with pytest.raises(UserError, match="class sums do not match"):
        Gallery.load(tmp_path, class_sums=(sums[:2], counts[:2]))


@pytest.mark.parametrize("selection", ["herding", "reservoir"])
def test_replay_round_trip(selection):
    rng = np.random.default_rng(0)
    replay = ReplayBuffer(20, selection)
    arrivals = {c: (np.arange(10) + 10 * c, _unit(rng, 10)) for c in range(3)}
    replay.update(arrivals, classes_seen=3, rng=rng)
    restored = ReplayBuffer(20, selection)
    restored.restore(replay.state())
    np.testing.assert_array_equal(restored.sample_ids(), replay.sample_ids())
    assert restored.per_class() == replay.per_class()
    for c, ids in replay.class_samples().items():
        np.testing.assert_array_equal(restored.class_samples()[c], ids)
        np.testing.assert_array_equal(restored._vectors[c], replay._vectors[c])
    # and both go on identically
    more = {3: (np.arange(10) + 30, _unit(rng, 10))}
    a_rng, b_rng = np.random.default_rng(5), np.random.default_rng(5)
    replay.update(more, classes_seen=4, rng=a_rng)
    restored.update(more, classes_seen=4, rng=b_rng)
    np.testing.assert_array_equal(restored.sample_ids(), replay.sample_ids())


def _value(field) -> object:
    """A run state field as plain, comparable values (arrays and tensors as lists); a type not known here fails."""
    if isinstance(field, torch.nn.Module):
        return field.spec, {k: v.tolist() for k, v in field.state_dict().items()}
    if isinstance(field, Gallery):
        items = np.arange(len(field))
        return (field.metadata().to_dict("list"), field.vectors(items).tolist(), field.describe(),
                [a.tolist() for a in field.class_sums()])
    if isinstance(field, ReplayBuffer):
        return {k: v.tolist() for k, v in field.state().items()}
    if isinstance(field, Evaluator):
        arrays, values = field.state()
        return {k: v.tolist() for k, v in arrays.items()}, values
    if isinstance(field, torch.Generator):
        return field.get_state().tolist()
    if isinstance(field, np.random.Generator):
        return field.bit_generator.state
    if isinstance(field, (int, str)):
        return field
    raise AssertionError(f"no comparison for a run state field of type {type(field).__name__}; add one to _value")


def test_a_resumed_run_state_equals_the_saved_one_in_every_field(tmp_path):
    """A field saved but not restored, or not saved, keeps its fresh value in the resumed state, which the run's differs from."""
    scenario = tiny_scenario(stream={"sessions": 2})
    store = tmp_path / "store"  # a run with a generation store keys its sessions: the lineage changes too
    run = Simulator(scenario, out_dir=tmp_path / "run", progress=False, store=store)
    with run.running():
        run.run_session(0)
    resumed = Simulator(scenario, out_dir=run.run_dir, resume=True, store=store)
    resumed._prepare()
    resumed.state.replay_rng.random()  # herding draws nothing in session 0: a generator left unrestored shows drawn from
    torch.rand(1, generator=resumed.state.train_generator)
    fresh = {f.name: _value(getattr(resumed.state, f.name)) for f in dataclasses.fields(RunState)}
    checkpoint.restore(resumed.state, run.run_dir)
    for field in dataclasses.fields(RunState):
        saved = _value(getattr(run.state, field.name))
        if saved == fresh[field.name]:  # pytest.fail, not assert: pytest's diff of these values would take minutes
            pytest.fail(f"{field.name}: session 0 did not change it, so this test cannot see it restored")
        if _value(getattr(resumed.state, field.name)) != saved:
            pytest.fail(f"{field.name} is not the same after a resume")


def test_model_state_loads_into_a_model_whose_classifier_has_not_grown_yet():
    grown = torch.nn.Module()
    grown.weight = torch.nn.Parameter(torch.randn(5, 3))
    grown.register_buffer("class_ids", torch.arange(5))
    fresh = torch.nn.Module()
    fresh.weight = torch.nn.Parameter(torch.empty(0, 3))
    fresh.register_buffer("class_ids", torch.empty(0, dtype=torch.long))
    load_model_state(fresh, grown.state_dict())
    assert isinstance(fresh.weight, torch.nn.Parameter)
    torch.testing.assert_close(fresh.weight, grown.weight)
    torch.testing.assert_close(fresh.class_ids, grown.class_ids)
