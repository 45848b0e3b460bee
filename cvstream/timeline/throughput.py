"""The timeline's throughput: images per second per accelerator for a training step, an embedding forward and a
psi mapping, from counted FLOPs against an accelerator profile, measured on this machine, or given."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
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
    """FLOPs of one psi forward, counted by `forward_flops` on a TransformNet of these sizes (weightless, on the meta
    device: no memory for its weights)."""
    from cvstream.gallery.backfill import TransformNet

    with torch.device("meta"):
        psi = TransformNet(dim, hidden)
    return forward_flops(psi, (dim,))


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


# -- serving: a query's search and a gallery's bytes, by index type -------------------------------------------


def search_flops(spec, items: float, dim: int, *, hnsw_visited: float | None = None, simulated_items: float | None = None) -> float:
    """FLOPs (2 x multiply-adds) of one query's search over `items` stored vectors of `dim`, by `spec.index`:

    flat N x d; ivf nlist x d (the coarse assignment) + nprobe x N / nlist x d; ivfpq the same coarse part, the query's
    lookup table (2^pq_bits x d), and one lookup-add per sub-quantiser of each scanned code; hnsw the distances a
    search visits (`hnsw_visited`, measured on the simulated gallery of `simulated_items`) x d, grown with log N.
    """
    if items <= 0:
        return 0.0
    if spec.index == "flat":
        macs = items * dim
    elif spec.index in ("ivf", "ivfpq"):
        nprobe = min(spec.nprobe, spec.nlist)
        scanned = nprobe * items / spec.nlist
        macs = spec.nlist * dim + (scanned * dim if spec.index == "ivf" else (1 << spec.pq_bits) * dim + scanned * spec.pq_m)
    elif spec.index == "hnsw":
        visited = hnsw_visited if hnsw_visited is not None else spec.ef_search * spec.hnsw_m
        base = max(simulated_items or items, 2.0)
        macs = min(visited * np.log(max(items, 2.0)) / np.log(base), items) * dim
    else:  # an index type registered by a plugin: priced as an exact scan
        macs = items * dim
    return 2.0 * float(macs)


def vector_bytes(spec, dim: int) -> float:
    """Bytes one item takes in the index: float32 vectors (flat), plus its id in an inverted list (ivf), a PQ code and
    its id (ivfpq), or plus the level-0 links of the graph (hnsw: 2 x M neighbours of 4 bytes)."""
    if spec.index == "ivf":
        return 4.0 * dim + 8
    if spec.index == "ivfpq":
        return spec.pq_m * spec.pq_bits / 8 + 8
    if spec.index == "hnsw":
        return 4.0 * dim + 8.0 * spec.hnsw_m
    return 4.0 * dim
