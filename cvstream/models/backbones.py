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

    input_kind = "images"
    default_width = 32

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


class _BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs and a shortcut (1x1 conv where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@BACKBONES.register("resnet18-cifar")
class ResNet18Cifar(nn.Module):
    """ResNet-18 in its CIFAR form: 3x3 stride-1 stem, no max-pool; widths w, 2w, 4w, 8w (w = 64 in the papers)."""

    input_kind = "images"
    default_width = 64  # the papers' ResNet-18

    def __init__(self, *, in_channels: int, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if stage == 0 else 2
            layers += [_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.out_dim = 8 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@BACKBONES.register("resnet18")
class ResNet18(nn.Module):
    """torchvision's ResNet-18 (ImageNet form: 7x7 stride-2 stem, max-pool), randomly initialised.

    Its widths are fixed (64..512), so `model.width` must be 64. No pretrained weights are downloaded.
    """

    input_kind = "images"
    default_width = 64
    fixed_width = True

    def __init__(self, *, in_channels: int, width: int = 64):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        self.net = net
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, *, stride: int = 1) -> nn.Sequential:
    """The official CVS code's one unit: conv (no bias), BatchNorm with eps 1e-6, ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out, eps=1e-6),
        nn.ReLU(inplace=True),
    )


class _CvsBasicBlock(nn.Module):
    """The CVS code's basic block: both branch convs and the 1x1 downsampling shortcut end in BN-ReLU, then add, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.branch = nn.Sequential(_conv_bn_relu(c_in, c_out, 3, stride=stride), _conv_bn_relu(c_out, c_out, 3))
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = _conv_bn_relu(c_in, c_out, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Out of place: the official `out += identity` writes into a ReLU output that autograd still needs.
        return torch.relu(self.branch(x) + self.shortcut(x))


@BACKBONES.register("resnet18-cvs")
class ResNet18Cvs(nn.Module):
    """The official CVS code's ImageNet-form ResNet-18 (its `models/imagenet.py`), randomly initialised.

    7x7 stride-2 stem and 3x3 stride-2 max-pool, as torchvision's, but every convolution is conv-BN-ReLU (the second
    conv of each branch and the downsampling shortcut included) and BatchNorm's eps is 1e-6. Widths fixed (64..512).
    """

    input_kind = "images"
    default_width = 64
    fixed_width = True

    def __init__(self, *, in_channels: int, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu(in_channels, 64, 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1)]
        c_in = 64
        for stage, c_out in enumerate((64, 128, 256, 512)):
            layers += [_CvsBasicBlock(c_in, c_out, 1 if stage == 0 else 2), _CvsBasicBlock(c_out, c_out, 1)]
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.out_dim = 512
        for m in self.modules():  # the official initialisation (BatchNorm's own, weight 1 and bias 0, is left as it is)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@BACKBONES.register("mlp")
class MLP(nn.Module):
    """Two hidden layers (8w units each, BN, ReLU) over precomputed feature vectors (N, D)."""

    input_kind = "vectors"
    default_width = 32

    def __init__(self, *, in_channels: int, width: int = 32):
        super().__init__()
        hidden = 8 * width
        self.features = nn.Sequential(
            nn.Linear(in_channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        )
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def build_backbone(name: str, *, in_channels: int, width: int) -> nn.Module:
    factory: Callable[..., nn.Module] = BACKBONES.get(name)
    return factory(in_channels=in_channels, width=width)
