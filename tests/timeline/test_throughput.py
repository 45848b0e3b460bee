"""The timeline's throughput: counted FLOPs against an accelerator profile, or measured on this machine."""

from __future__ import annotations

import pytest

from conftest import tiny_scenario
from cvstream.models.flops import forward_flops, images_per_second
from cvstream.simulator import Simulator
from cvstream.gallery.index import IndexSpec
from cvstream.timeline.throughput import resolve_throughput, search_flops, vector_bytes


def test_flops_throughput_is_the_counted_flops_over_the_profile():
    sim = Simulator(tiny_scenario(timeline={"accelerator": {"tflops": 100, "utilization": 0.5}}), write=False)
    with sim.running():
        tp = resolve_throughput(sim.scenario.timeline, sim.model, tuple(sim.images.shape[1:]), hidden=256, images=sim.images)
        flops = forward_flops(sim.model, tuple(sim.images.shape[1:]))
    assert tp.flops_per_image == flops > 0
    assert tp.embed == pytest.approx(100e12 * 0.5 / flops) and tp.train == pytest.approx(tp.embed / 3)
    assert images_per_second(flops, tflops=100, utilization=0.5) == tp.embed


def test_measured_throughput_times_this_machine():
    sim = Simulator(tiny_scenario(timeline={"throughput": "measured"}), write=False)
    with sim.running():
        tp = resolve_throughput(sim.scenario.timeline, sim.model, tuple(sim.images.shape[1:]), hidden=256, images=sim.images)
    assert tp.source == "measured" and tp.train > 0 and tp.embed > tp.train  # a forward is cheaper than a training step


@pytest.mark.parametrize(
    ("index", "expected_macs"),
    [
        ("flat", 1e6 * 64),  # N x d
        ("ivf", 100 * 64 + 10 * 1e6 / 100 * 64),  # the coarse assignment, then nprobe lists of N / nlist vectors
        ("ivfpq", 100 * 64 + 256 * 64 + 10 * 1e6 / 100 * 8),  # the coarse part, the lookup table, 8 lookups a code
    ],
)
def test_search_flops_by_index_type_on_hand_counts(index, expected_macs):
    spec = IndexSpec(index=index, nlist=100, nprobe=10, pq_m=8, pq_bits=8)
    assert search_flops(spec, 1e6, 64) == pytest.approx(2 * expected_macs)
    assert search_flops(spec, 0, 64) == 0.0


def test_hnsw_search_flops_grow_with_log_n_from_the_measured_visits():
    spec = IndexSpec(index="hnsw")
    here = search_flops(spec, 1000, 32, hnsw_visited=500, simulated_items=1000)
    assert here == pytest.approx(2 * 500 * 32)  # at the simulated size: what was measured
    assert search_flops(spec, 1e6, 32, hnsw_visited=500, simulated_items=1000) == pytest.approx(2 * 500 * 32 * 2)  # log 1e6 / log 1e3


def test_vector_bytes_by_index_type():
    assert vector_bytes(IndexSpec(index="flat"), 128) == 512
    assert vector_bytes(IndexSpec(index="ivfpq", pq_m=16, pq_bits=8), 128) == 16 + 8
    assert vector_bytes(IndexSpec(index="hnsw", hnsw_m=32), 128) == 512 + 256
