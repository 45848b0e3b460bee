"""The trainer of one session, and the embedding of items by a generation.

Per step: shuffle, augment (on the uint8 batch), scale, forward, ask the method for its loss terms,
step; around that, the learning-rate schedule (set every step or every epoch), the previous
generation's counted forwards, best-epoch selection by validation, and the per-term sample counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from cvstream.errors import UserError
from cvstream.models import distributed
from cvstream.models.augment import crop_flip, rand_augment
from cvstream.models.distributed import Shard
from cvstream.models.methods.base import Batch, Method, TrainContext


class TrainingDiverged(UserError):
    """A loss term became NaN or infinite."""


@dataclass
class TrainStats:
    steps: int = 0
    samples: int = 0
    backbone_forwards: int = 0  # current model's forwards plus the previous generation's
    seconds: float = 0.0
    last_terms: dict[str, float] = field(default_factory=dict)
    validation: list[float] = field(default_factory=list)  # score after each epoch, if validated
    best_epoch: int | None = None  # the epoch whose weights were kept
    term_samples: dict[str, int] = field(default_factory=dict)  # per loss term, the training samples it acted on


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> float in [-1, 1]; float inputs (feature vectors) pass unscaled."""
    if images.is_floating_point():
        return images.float()
    return images.float().div_(127.5).sub_(1.0)


def _channels_last(x: torch.Tensor, amp: bool) -> torch.Tensor:
    """Image batches in channels-last (NHWC) where it pays: on CUDA, and on a CPU under bfloat16 autocast
    (in float32 on the CPU it costs ResNet-18 13%: benchmarks/cpu_precision.py)."""
    if x.dim() == 4 and (x.device.type == "cuda" or amp_active(x.device, amp)):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _cpu_channels_last(model: torch.nn.Module, images: torch.Tensor, amp: bool) -> None:
    """On a CPU under bfloat16 autocast, the conv weights in channels-last too (oneDNN reorders them every call
    otherwise); a no-op for a model that already is, for feature vectors, and on CUDA (cuDNN takes either)."""
    if images.dim() == 4 and images.device.type == "cpu" and amp_active(images.device, amp):
        model.to(memory_format=torch.channels_last)


def learning_rate(epoch: float, *, lr: float, warmup_epochs: int, warmup_factor: float, period: int, mult: int, min_ratio: float) -> float:
    """Warm-up at lr * warmup_factor, then cosine annealing with warm restarts (T_0 = period, T_mult = mult)."""
    if epoch < warmup_epochs:
        return lr * warmup_factor
    e = epoch - warmup_epochs
    length = float(period)
    while e >= length:
        e -= length
        length *= mult
    eta_min = lr * min_ratio
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * e / length)) / 2


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (x86 AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags) and
    torch has oneDNN to use it: elsewhere bfloat16 would be emulated, slower than float32, so it stays off."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def amp_active(device: torch.device, enabled: bool) -> bool:
    """`training.amp` on a device that supports it: any CUDA device, a CPU with native bfloat16."""
    return enabled and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()))


def _autocast(device: torch.device, enabled: bool):
    if amp_active(device, enabled):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_session(
    *,
    model: torch.nn.Module,
    method: Method,
    images: torch.Tensor,
    sample_ids: np.ndarray,
    class_ids: np.ndarray,
    context: TrainContext,
    spec,
    generator: torch.Generator,
    augment_images: bool,
    flip: bool,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    validate: Callable[[torch.nn.Module], float] | None = None,
    shard: Shard | None = None,
) -> TrainStats:
    """Train `model` in place on `sample_ids` (indices into `images`, on the device).

    With `validate` (model in eval mode -> score), the weights of the best-scoring epoch are kept.
    """
    stats = TrainStats()
    n = len(sample_ids)
    if spec.epochs == 0 or n < 2:
        return stats
    device = images.device
    _cpu_channels_last(model, images, spec.amp)  # before the optimiser: its buffers take the weights' layout
    optimizer = torch.optim.SGD(
        model.parameters(), lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov and spec.momentum > 0, weight_decay=spec.weight_decay
    )
    ids = torch.as_tensor(sample_ids, dtype=torch.long, device=device)
    classes = torch.as_tensor(class_ids, dtype=torch.long, device=device)
    rows = model.rows_of(classes)
    batch_size = min(spec.batch_size, n)
    if shard is not None:  # every process takes an equal slice of each global batch
        distributed.check_batch(spec.batch_size, shard)
        batch_size -= batch_size % shard.world_size
    steps_per_epoch = n // batch_size  # drop the ragged tail: every step sees a full batch
    total = steps_per_epoch * spec.epochs
    model.train()
    started = time.perf_counter()
    previous_embed = context.previous_embed
    if previous_embed is not None:
        def counted(x: torch.Tensor) -> torch.Tensor:
            stats.backbone_forwards += len(x)
            with torch.no_grad(), _autocast(device, spec.amp):
                return previous_embed(x).float()

        context = dataclasses.replace(context, previous_embed=counted)
    method.begin_session(model, context)
    if not method.trains(context.session):  # e.g. a frozen backbone: no step, the deployed generation stays
        model.eval()
        return stats

    def embed_training() -> torch.Tensor:
        stats.backbone_forwards += n
        out = embed(model, images, sample_ids, batch_size=spec.eval_batch_size, amp=spec.amp)
        model.train()  # embed() left it in eval mode
        return torch.from_numpy(out).to(device)

    forward = distributed.wrap(model) if shard is not None else model
    covered: dict[str, int | torch.Tensor] = {}  # summed on the device, read once at the end
    for epoch in range(spec.epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for i in range(steps_per_epoch):
            at = epoch + (i / steps_per_epoch if spec.lr_every == "step" else 0)  # "epoch": whole epochs, as the CVS loop
            lr = learning_rate(
                at, lr=spec.lr, warmup_epochs=spec.warmup_epochs, warmup_factor=spec.warmup_factor,
                period=spec.restart_period, mult=spec.restart_mult, min_ratio=spec.min_lr_ratio,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            pick = order[i * batch_size : (i + 1) * batch_size]
            x = images[ids[pick]]
            if augment_images and x.dim() == 4:
                x = crop_flip(x, generator, padding=spec.crop_padding, flip=flip)
                if spec.randaugment:
                    x = rand_augment(x, generator)
            x = _channels_last(to_input(x), spec.amp)
            drawn = len(pick)  # the global batch; with a shard, this process trains on its slice
            if shard is not None:
                x, pick = x[shard.part(drawn)], pick[shard.part(drawn)]
            with _autocast(device, spec.amp):
                embeddings = forward(x)
                batch = Batch(inputs=x, rows=rows[pick], class_ids=classes[pick], embeddings=embeddings)
                terms = method.loss(model, batch, context)
            stats.backbone_forwards += drawn * (1 + method.extra_forwards)
            for name in terms:
                mask = batch.covered.get(name)
                covered[name] = covered.get(name, 0) + (len(batch.rows) if mask is None else mask.sum())
            loss = sum(terms.values())
            values = {name: float(value.detach()) for name, value in terms.items()}
            bad = [name for name, value in values.items() if not math.isfinite(value)]
            if bad:
                raise TrainingDiverged(
                    f"session {context.session}, step {stats.steps + 1}: loss term {bad[0]!r} is {values[bad[0]]}; "
                    f"lower training.lr (now {spec.lr}) or the term's weight"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stats.steps += 1
            stats.samples += drawn
            stats.last_terms = values
            method.after_step(model, fraction=stats.steps / total, context=context, embed_training=embed_training)
            if on_step is not None:
                on_step(stats.steps, total, values)
        if validate is not None:
            model.eval()
            stats.validation.append(float(validate(model)))
            model.train()
            if stats.best_epoch is None or stats.validation[-1] > stats.validation[stats.best_epoch]:
                stats.best_epoch = epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stats.term_samples = {name: int(count) for name, count in covered.items()}
    if validate is not None and stats.best_epoch != spec.epochs - 1:
        model.load_state_dict(best_state)
    model.eval()
    stats.seconds = time.perf_counter() - started
    return stats


@torch.no_grad()
def embed(model: torch.nn.Module, images: torch.Tensor, sample_ids: np.ndarray, *, batch_size: int, amp: bool) -> np.ndarray:
    """Embeddings (float32, L2-normalised, contiguous) of `sample_ids` by `model` in eval mode."""
    model.eval()
    device = images.device
    _cpu_channels_last(model, images, amp)
    out = np.empty((len(sample_ids), model.embedding_dim), dtype=np.float32)
    ids = torch.as_tensor(np.asarray(sample_ids), dtype=torch.long, device=device)
    for start in range(0, len(ids), batch_size):
        x = _channels_last(to_input(images[ids[start : start + batch_size]]), amp)
        with _autocast(device, amp):
            f = model(x)
        f = torch.nn.functional.normalize(f.float(), dim=1)
        out[start : start + len(f)] = f.cpu().numpy()
    return out
