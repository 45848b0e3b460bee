"""Backbones: images (or feature vectors) in, a flat feature vector out."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from cvstream.registry import Registry

BACKBONES: Registry = Registry("backbone")


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@BACKBONES.register("convnet")
class ConvNet(nn.Module):
    """Four conv-BN-ReLU blocks (widths w, 2w, 4w, 8w), three 2x2 pools, global average pooling.

    Small enough to train on a 2-core CPU in minutes at 32x32.
    """

    def __init__(self, *, in_channels: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            _block(in_channels, width, pool=True),
            _block(width, 2 * width, pool=True),
            _block(2 * width, 4 * width, pool=True),
            _block(4 * width, 8 * width, pool=False),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_dim = 8 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def build_backbone(name: str, *, in_channels: int, width: int) -> nn.Module:
    factory: Callable[..., nn.Module] = BACKBONES.get(name)
    return factory(in_channels=in_channels, width=width)
