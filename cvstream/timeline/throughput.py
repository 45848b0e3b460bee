"""The timeline's throughput: images per second per accelerator for a training step, an embedding forward and a
psi mapping, from counted FLOPs against an accelerator profile, measured on this machine, or given."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from cvstream.models.flops import forward_flops, images_per_second
from cvstream.models.trainer import to_input


@dataclass(frozen=True)
class Throughput:
    """Per accelerator: training images per second, embedding forwards per second, psi mappings per second."""

    train: float
    embed: float
    transform: float
    source: str
    flops_per_image: int | None = None


def psi_flops(dim: int, hidden: int) -> int:
    """FLOPs of one psi forward (cvstream.gallery.backfill.TransformNet: three linear layers and a variance head)."""
    return 2 * (dim * hidden + hidden * hidden + hidden * dim + hidden)


def resolve_throughput(
    spec, model: torch.nn.Module, sample_shape: tuple[int, ...], *, hidden: int, images: torch.Tensor, flops: int | None = None
) -> Throughput:
    """The timeline's throughput for `model`: counted FLOPs against the accelerator profile, measured here, or given.
    `flops`: the model's FLOPs per image where already counted."""
    flops = forward_flops(model, sample_shape) if flops is None else flops
    psi = psi_flops(model.embedding_dim, hidden)
    if spec.throughput == "flops":
        a = spec.accelerator
        embed = images_per_second(flops, tflops=a.tflops, utilization=a.utilization)
        return Throughput(train=images_per_second(flops, tflops=a.tflops, utilization=a.utilization, train=True), embed=embed,
                          transform=embed * flops / psi, source="flops", flops_per_image=flops)
    if spec.throughput == "measured":
        train, embed = measure_throughput(model, images)
        return Throughput(train=train, embed=embed, transform=embed * flops / psi, source="measured", flops_per_image=flops)
    given = spec.throughput
    return Throughput(train=given.train, embed=given.embed, transform=given.transform or given.embed * flops / psi, source="given",
                      flops_per_image=flops)


def measure_throughput(model: torch.nn.Module, images: torch.Tensor, *, batch: int = 64, repeats: int = 3) -> tuple[float, float]:
    """(training images/s, embedding forwards/s) of `model` on this machine: the best of a few timed batches."""
    probe = copy.deepcopy(model)
    x = to_input(images[: min(batch, len(images))])  # as the trainer scales them
    optimizer = torch.optim.SGD(probe.parameters(), lr=1e-9)
    best_train = best_embed = float("inf")
    for _ in range(repeats):
        probe.train()
        clock = time.perf_counter()
        loss = probe(x).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        best_train = min(best_train, time.perf_counter() - clock)
        probe.eval()
        clock = time.perf_counter()
        with torch.no_grad():
            probe(x)
        best_embed = min(best_embed, time.perf_counter() - clock)
    return len(x) / best_train, len(x) / best_embed
