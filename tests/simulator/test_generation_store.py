"""The generation store (SPEC section 13): a training reached twice is done once, and what is reused is what training
gives, bit for bit; a bad entry is trained again, never loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_scenario
from cvstream.simulator import Simulator
from cvstream.simulator.generation_store import GenerationStore

# cvs reads the gallery (L_d's class means) and the evaluation measures anytime points: both go into the key.
SECTIONS = {"method": {"name": "cvs", "alpha": 1.0}, "evaluation": {"probe_items": 20, "every_steps": 4}}


def run(store=None, *, policy="none", **sections):
    sim = Simulator(tiny_scenario(**{**SECTIONS, **sections}, backfill={"policy": policy}), write=False, store=store)
    result = sim.run()
    return sim, result


def same_tables(a, b) -> None:
    pd.testing.assert_frame_equal(a.metrics.drop(columns="run_id"), b.metrics.drop(columns="run_id"))
    # Costs as billed: the same work, the same forwards; the reused training keeps the seconds it took when it ran.
    keep = ["session", "phase", "backbone_forwards", "transform_forwards", "items", "backbone_flops"]
    pd.testing.assert_frame_equal(a.costs[keep], b.costs[keep])


def test_a_reused_run_is_the_trained_run_bit_for_bit(tmp_path):
    plain_sim, plain = run()
    store = GenerationStore(tmp_path / "store")
    first_sim, first = run(store)
    assert store.hits == 0 and store.misses == 3 and len(store.entries()) == 3
    assert not first.costs.reused.any()
    second_sim, second = run(store)
    assert store.hits == 3  # every session taken from the store, none trained
    train = second.costs[second.costs.phase == "train"]
    assert train.reused.all() and not second.costs[second.costs.phase != "train"].reused.any()
    assert np.array_equal(train.seconds.to_numpy(), first.costs[first.costs.phase == "train"].seconds.to_numpy())
    for other in (first, second):
        same_tables(plain, other)
    for sim in (first_sim, second_sim):
        for name, value in plain_sim.state.model.state_dict().items():
            assert torch.equal(value, sim.state.model.state_dict()[name])
        assert torch.equal(sim.state.train_generator.get_state(), plain_sim.state.train_generator.get_state())
        items = np.arange(len(plain_sim.state.gallery))
        assert np.array_equal(sim.state.gallery.vectors(items), plain_sim.state.gallery.vectors(items))


def test_policies_share_the_sessions_before_the_first_backfill_changes_the_gallery(tmp_path):
    store = GenerationStore(tmp_path / "store")
    run(store, policy="none")
    assert store.misses == 3
    _, full = run(store, policy="full")
    # Sessions 0 and 1 train on the same gallery under both policies (nothing is stale before session 1's deploy);
    # from session 2 on, cvs's L_d reads a gallery that `full` re-embedded: a new key.
    assert store.hits == 2 and store.misses == 4
    assert full.costs[full.costs.phase == "train"].reused.tolist() == [True, True, False]
    _, again = run(store, policy="full", training={"epochs": 1, "batch_size": 16, "lr": 0.05, "eval_batch_size": 64, "amp": False})
    assert store.hits == 2 and not again.costs.reused.any()  # a changed training key trains again


def test_a_method_that_does_not_read_the_gallery_shares_every_session_across_policies(tmp_path):
    store = GenerationStore(tmp_path / "store")
    run(store, policy="none", method={"name": "bct"}, evaluation={"probe_items": 0})
    run(store, policy="full", method={"name": "bct"}, evaluation={"probe_items": 0})
    assert store.hits == 3 and store.misses == 3


def test_another_torch_thread_count_trains_again(tmp_path):
    """Torch's CPU kernels round differently on another number of threads (the trained networks differ): a generation
    trained on one count is not what another trains, so the thread count is part of the key."""
    store = GenerationStore(tmp_path / "store")
    held = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_sim, _ = run(store)
        torch.set_num_threads(2)
        two_sim, _ = run(store)
        assert store.hits == 0 and store.misses == 6
        _, again = run(store)
        assert store.hits == 3 and again.costs[again.costs.phase == "train"].reused.all()
    finally:
        torch.set_num_threads(held)
    one, two = one_sim.state.model.state_dict(), two_sim.state.model.state_dict()
    assert any(not torch.equal(one[name], two[name]) for name in one)  # why: one thread and two train apart


@pytest.mark.parametrize("damage", ["truncate", "flip", "version"])
def test_a_damaged_entry_is_trained_again_never_loaded(tmp_path, damage):
    store = GenerationStore(tmp_path / "store")
    _, first = run(store)
    entry = store.entries()[0]
    data = entry.read_bytes()
    head, _, payload = data.partition(b"\n")
    if damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        entry.write_bytes(head + b"\n" + payload[:-10] + bytes(b ^ 0xFF for b in payload[-10:]))
    else:
        header = json.loads(head)
        header["torch"] = "0.0.1"
        entry.write_bytes(json.dumps(header).encode() + b"\n" + payload)
    fresh = GenerationStore(store.folder)
    _, second = run(fresh)
    assert fresh.rejected == 1 and fresh.hits == 2
    same_tables(first, second)
    assert GenerationStore(store.folder).load(entry.stem) is not None  # the new training replaced the damaged entry


def test_clear_removes_every_entry(tmp_path):
    store = GenerationStore(tmp_path / "store")
    run(store)
    (store.folder / "ab").mkdir()
    (store.folder / "ab" / ".x.gen.tmp123").write_bytes(b"half")  # what a killed writer leaves
    assert store.clear() == 3 and store.entries() == [] and not any(store.folder.rglob("*"))


RACE = """
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_scenario
from cvstream.simulator import Simulator
from cvstream.simulator.generation_store import GenerationStore
store = GenerationStore(sys.argv[1])
result = Simulator(tiny_scenario(**{sections!r}), write=False, store=store).run()
print(store.hits, store.misses, int(result.costs.reused.sum()))
"""


def test_two_processes_that_reach_the_same_keys_at_once_leave_whole_entries(tmp_path):
    script = tmp_path / "race.py"
    script.write_text(RACE.format(tests=str(Path(__file__).resolve().parents[1]), sections=SECTIONS))
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "store")], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    trained = sum(int(misses) for _, misses, _ in outputs)
    assert 3 <= trained <= 6  # each key trained at most twice, once per process
    store = GenerationStore(tmp_path / "store")
    assert len(store.entries()) == 3 and all(store.load(p.stem) is not None for p in store.entries())
    assert store.rejected == 0 and not list((tmp_path / "store").rglob(".*"))  # no temporary file left behind
