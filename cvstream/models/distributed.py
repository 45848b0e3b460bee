"""One session's training across processes: torch.distributed DDP, launched by torchrun.

Every process runs the whole simulation with the same seed (same stream, same gallery,
same evaluation); only training is split. Each step every process draws the same global
batch (same generator), keeps its own slice, and DDP averages the gradients, so the
step equals the single-process step on the global batch. BatchNorm statistics are
reduced over all processes while training, for the same reason. Losses that compare the
samples of a batch with each other (hardest negatives) see only the local slice.

    torchrun --nproc_per_node 2 -m cvstream run scenario.yaml   # gloo on CPU, nccl on CUDA
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass
import torch
import torch.distributed as dist
from torch import nn

from cvstream.errors import UserError


@dataclass(frozen=True)
class Shard:
    """This process's place among `world_size` processes that train one model together."""

    rank: int
    world_size: int

    def part(self, n: int) -> slice:
        """This process's slice of a global batch of `n` samples (n divisible by world_size)."""
        size = n // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)

    @property
    def leader(self) -> bool:
        return self.rank == 0


def from_environment(device: str = "auto") -> Shard | None:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK); None when run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    if not dist.is_initialized():
        cuda = device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" then means this process's GPU
        dist.init_process_group("nccl" if cuda else "gloo")
    return Shard(rank=dist.get_rank(), world_size=dist.get_world_size())


def check_batch(batch_size: int, shard: Shard) -> None:
    if batch_size % shard.world_size:
        raise UserError(
            f"training.batch_size = {batch_size} must be divisible by the {shard.world_size} processes that share each batch"
        )


def wrap(model: nn.Module) -> nn.Module:
    """DDP over `model`, with synced BatchNorm; buffers need no broadcast since the sync keeps them equal."""
    device = next(model.parameters()).device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    sync_batchnorm(model)
    # find_unused_parameters must stay False: the classifier rows are used outside forward (in the loss),
    # and DDP would otherwise reduce them as unused before their gradients exist.
    ddp = nn.parallel.DistributedDataParallel
    sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters else {"broadcast_buffers": False}
    return ddp(model, device_ids=ids, **sync)


def sync_batchnorm(model: nn.Module) -> None:
    """From now on, BatchNorm layers of `model` in training mode normalise with statistics over all processes."""
    for layer in model.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and "forward" not in vars(layer):
            layer.forward = functools.partial(_synced_forward, layer)  # eval mode and single processes: unchanged


def _synced_forward(layer: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    if not layer.training or not dist.is_initialized() or dist.get_world_size() == 1:
        return type(layer).forward(layer, x)
    dims = [0, *range(2, x.dim())]
    total = x.numel() // x.shape[1] * dist.get_world_size()
    wide = x.double()  # sums of squares in double: the variance then matches the one-process two-pass value
    sums = _SumOverProcesses.apply(torch.cat([wide.sum(dims), (wide * wide).sum(dims)]))
    mean, square = sums.chunk(2)
    mean = mean / total
    var = square / total - mean * mean
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype) + layer.eps).view(shape)
    if layer.affine:
        y = y * layer.weight.view(shape) + layer.bias.view(shape)
    if layer.track_running_stats:
        with torch.no_grad():
            layer.num_batches_tracked.add_(1)
            momentum = layer.momentum if layer.momentum is not None else 1.0 / float(layer.num_batches_tracked)
            layer.running_mean.mul_(1 - momentum).add_(mean.to(x.dtype), alpha=momentum)
            layer.running_var.mul_(1 - momentum).add_((var * total / max(total - 1, 1)).to(x.dtype), alpha=momentum)
    return y


class _SumOverProcesses(torch.autograd.Function):
    """Sum a tensor over all processes; the gradient of a sum is the sum of the gradients, over all processes too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad
