"""FLOPs per image, counted with torch.utils.flop_counter: the backbone's and psi's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cvstream.gallery.backfill import TransformNet
from cvstream.models.flops import forward_flops
from cvstream.timeline.throughput import psi_flops, resolve_throughput

# psi of dim 6, hidden 5 by hand (2 FLOPs per multiply-add): body 6->5 and 5->5, output 5->6, log-variance head 5->1.
PSI_6_5 = 2 * (6 * 5 + 5 * 5 + 5 * 6 + 5 * 1)


def test_forward_flops_counts_a_linear_layer_exactly():
    assert forward_flops(torch.nn.Linear(10, 4, bias=False), (10,)) == 2 * 10 * 4


def test_psi_flops_are_counted_on_the_transform_network():
    assert PSI_6_5 == 180
    assert psi_flops(6, 5) == PSI_6_5 == forward_flops(TransformNet(6, 5), (6,))


def test_the_timelines_transform_throughput_uses_psis_count():
    backbone = torch.nn.Linear(4, 6, bias=False)
    backbone.embedding_dim = 6
    spec = SimpleNamespace(throughput="flops", accelerator=SimpleNamespace(tflops=100, utilization=0.5))
    tp = resolve_throughput(spec, backbone, (4,), hidden=5, images=torch.zeros(1, 4))
    assert tp.flops_per_image == 2 * 4 * 6
    assert tp.transform == pytest.approx(100e12 * 0.5 / PSI_6_5)  # psi mappings per second: the profile over psi's FLOPs
