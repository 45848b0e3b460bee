"""Backbones: the forms they promise and the shapes they give."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from cvstream.models.backbones import BACKBONES
from cvstream.models.flops import forward_flops
from cvstream.models.net import EmbeddingNet
from cvstream.scenario import NetworkSpec


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


def _resnet18_cvs(in_channels: int = 3) -> nn.Module:
    return BACKBONES.get("resnet18-cvs")(in_channels=in_channels, width=64)


def test_resnet18_cvs_puts_bn_and_relu_after_every_conv():
    """Each conv feeds only a BatchNorm (eps 1e-6) that feeds only a ReLU, as the CVS code's ConvBlock, traced on the data flow."""
    net = _resnet18_cvs()
    graph = torch.fx.symbolic_trace(net).graph
    modules = dict(net.named_modules())

    def module(node):
        return modules[node.target] if node.op == "call_module" else None

    convs = [n for n in graph.nodes if isinstance(module(n), nn.Conv2d)]
    assert len(convs) == 1 + 8 * 2 + 3  # stem, two per basic block, three downsampling shortcuts
    for conv in convs:
        assert module(conv).bias is None
        (bn,) = conv.users
        assert isinstance(module(bn), nn.BatchNorm2d) and module(bn).eps == 1e-6
        (relu,) = bn.users
        assert isinstance(module(relu), nn.ReLU)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == len(convs)
    shortcuts = [c for c in convs if module(c).kernel_size == (1, 1)]
    assert len(shortcuts) == 3 and all(module(c).stride == (2, 2) for c in shortcuts)

    adds = [n for n in graph.nodes if n.op == "call_function" and n.target is operator.add]
    assert len(adds) == 8
    for add in adds:
        branch, _ = add.args
        assert isinstance(module(branch), nn.ReLU)  # the branch's second conv is conv-BN-ReLU before the addition
        assert [(u.op, u.target) for u in add.users] == [("call_function", torch.relu)]  # and a ReLU after the addition too
    # With a downsampling shortcut both summands are conv-BN-ReLU outputs.
    assert sum(isinstance(module(add.args[1]), nn.ReLU) for add in adds) == 3


def test_resnet18_cvs_has_an_imagenet_stem_and_shapes():
    net = _resnet18_cvs(in_channels=1)
    stem, pool = net.features[0][0], net.features[1]
    assert stem.kernel_size == (7, 7) and stem.stride == (2, 2) and stem.in_channels == 1
    assert isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 3 and pool.stride == 2
    assert isinstance(net.features[-2], nn.AdaptiveAvgPool2d)
    for size in (64, 32):
        assert net(torch.zeros(2, 1, size, size)).shape == (2, 512)
    assert net.out_dim == 512


def test_resnet18_cvs_has_torchvisions_convs_parameters_and_flops():
    """Only the order of BN and ReLU and the add differ from torchvision's: same conv shapes, same parameters and FLOPs."""
    ours, torchvisions = _resnet18_cvs(), BACKBONES.get("resnet18")(in_channels=3, width=64)
    shapes = [[m.weight.shape for m in net.modules() if isinstance(m, nn.Conv2d)] for net in (ours, torchvisions)]
    assert shapes[0] == shapes[1]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in torchvisions.parameters()) == 11_176_512
    flops = forward_flops(ours, (3, 64, 64))
    assert flops == forward_flops(torchvisions, (3, 64, 64))
    assert 0.28e9 < flops < 0.31e9  # 1.82 GFLOP-multiply-adds at 224x224, scaled by (64/224)^2, times 2


def test_resnet18_cvs_width_is_fixed():
    assert NetworkSpec(backbone="resnet18-cvs").width == 64
    with pytest.raises(ValueError, match="fixed widths"):
        NetworkSpec(backbone="resnet18-cvs", width=32)


def test_resnet18_cvs_trains_one_step():
    generator = torch.Generator().manual_seed(0)
    net = EmbeddingNet(backbone="resnet18-cvs", in_channels=3, width=64, embedding_dim=16)
    net.add_classes([3, 7], generator)
    images = torch.randn(4, 3, 32, 32, generator=generator)
    rows = net.rows_of(torch.tensor([3, 7, 3, 7]))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    before = net.backbone.features[0][0].weight.detach().clone()
    loss = F.cross_entropy(net.cosine(net(images)) / 0.05, rows)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    optimizer.step()
    assert not torch.equal(net.backbone.features[0][0].weight, before)
