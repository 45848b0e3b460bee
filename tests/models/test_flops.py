"""FLOPs per image, counted with torch.utils.flop_counter."""

from __future__ import annotations

import torch

from cvstream.models.flops import forward_flops


def test_forward_flops_counts_a_linear_layer_exactly():
    assert forward_flops(torch.nn.Linear(10, 4, bias=False), (10,)) == 2 * 10 * 4
