"""The timeline's throughput: counted FLOPs against an accelerator profile, or measured on this machine."""

from __future__ import annotations

import pytest

from conftest import tiny_scenario
from cvstream.models.flops import forward_flops, images_per_second
from cvstream.simulator import Simulator
from cvstream.timeline.throughput import resolve_throughput


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
