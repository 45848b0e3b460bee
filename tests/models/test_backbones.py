"""Backbones: the forms they promise and the shapes they give."""

from __future__ import annotations

import torch
from torch import nn

from cvstream.models.backbones import BACKBONES


def test_resnet18_cifar_keeps_resolution_in_its_stem():
    net = BACKBONES.get("resnet18-cifar")(in_channels=3, width=8)
    stem = net.features[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    blocks = [m for m in net.modules() if type(m).__name__ == "_BasicBlock"]
    assert len(blocks) == 8  # 2 per stage, 4 stages: ResNet-18
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 64)


def test_resnet18_is_torchvisions_imagenet_form():
    net = BACKBONES.get("resnet18")(in_channels=1, width=64)
    assert net.net.conv1.kernel_size == (7, 7) and net.net.conv1.in_channels == 1
    assert isinstance(net.net.maxpool, nn.MaxPool2d)
    assert net(torch.zeros(2, 1, 64, 64)).shape == (2, 512)


def test_mlp_takes_vectors():
    net = BACKBONES.get("mlp")(in_channels=10, width=4)
    net.eval()
    assert net(torch.zeros(3, 10)).shape == (3, 32)
    assert BACKBONES.get("mlp").input_kind == "vectors" and BACKBONES.get("convnet").input_kind == "images"
