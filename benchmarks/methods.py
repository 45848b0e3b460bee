"""Training-step cost of `cvs` against `finetune` on the same batches, and vectorised vs looped hardest-negative mining.

Run: .venv/bin/python benchmarks/methods.py [--batch 64] [--size 32] [--width 32] [--steps 30] [--threads 1]
Targets: cvs step within 2.2x of finetune's; vectorised mining >= 20x a per-sample loop at batch 64.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from cvstream.models.losses import hardest_negative_triplet
from cvstream.models.methods import METHODS, TrainContext
from cvstream.models.net import EmbeddingNet
from cvstream.models.trainer import train_session
from cvstream.scenario import TrainingSpec


def _model(*, width: int, classes: int) -> EmbeddingNet:
    torch.manual_seed(0)
    model = EmbeddingNet(backbone="convnet", in_channels=3, width=width, embedding_dim=128)
    model.add_classes(list(range(classes)), torch.Generator().manual_seed(0))
    return model


def step_seconds(name: str, *, batch: int, size: int, width: int, steps: int, classes: int = 20) -> float:
    """Mean seconds per training step of method `name` (warm-up epoch excluded), same data for every method."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (batch * steps, 3, size, size), dtype=torch.uint8, generator=g)
    labels = np.arange(batch * steps) % classes
    model = _model(width=width, classes=classes)
    previous = copy.deepcopy(model).eval().requires_grad_(False)
    method = METHODS.get(name)(METHODS.get(name).Params())
    context = TrainContext(session=1)
    if "previous_model" in method.needs:
        context.previous_embed = previous
    if "class_means" in method.needs:
        context.class_means = torch.nn.functional.normalize(torch.randn(classes, 128, generator=g), dim=1)
        context.old_rows = torch.arange(classes) < classes // 2
    spec = TrainingSpec(epochs=2, batch_size=batch, warmup_epochs=0)
    stats = train_session(
        model=model, method=method, images=images, sample_ids=np.arange(len(images)), class_ids=labels, context=context,
        spec=TrainingSpec(epochs=1, batch_size=batch, warmup_epochs=0), generator=torch.Generator().manual_seed(2),
        augment_images=True, flip=True,
    )  # warm-up: allocator, kernels
    stats = train_session(
        model=model, method=method, images=images, sample_ids=np.arange(len(images)), class_ids=labels, context=context,
        spec=spec, generator=torch.Generator().manual_seed(2), augment_images=True, flip=True,
    )
    return stats.seconds / stats.steps


def looped_mining(anchor, positive, negatives, labels, margin):
    """The per-sample Python loop the vectorised version replaces (reference, not used by the package)."""
    losses = []
    for i in range(len(anchor)):
        d_pos = (anchor[i] - positive[i]).norm()
        others = [(anchor[i] - negatives[j]).norm() for j in range(len(anchor)) if labels[j] != labels[i]]
        if others:
            losses.append(torch.relu(d_pos - torch.stack(others).min() + margin))
    return torch.stack(losses).mean()


def mining_seconds(fn, *, batch: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(3)
    anchor = torch.nn.functional.normalize(torch.randn(batch, 128, generator=g), dim=1)
    old = torch.nn.functional.normalize(torch.randn(batch, 128, generator=g), dim=1)
    labels = torch.randint(0, 20, (batch,), generator=g)
    fn(anchor, old, old, labels, 0.1)
    started = time.perf_counter()
    for _ in range(repeats):
        fn(anchor, old, old, labels, 0.1)
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 keeps the ratio stable on a shared CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.size}x{args.size}, convnet width {args.width}")
    seconds = {}
    for name in ("finetune", "cvs"):
        seconds[name] = step_seconds(name, batch=args.batch, size=args.size, width=args.width, steps=args.steps)
        print(f"{name:>9}: {seconds[name] * 1000:8.1f} ms/step")
    print(f"cvs / finetune step time: {seconds['cvs'] / seconds['finetune']:.2f}x (target <= 2.2)")
    vectorised = mining_seconds(hardest_negative_triplet, batch=args.batch, repeats=200)
    looped = mining_seconds(looped_mining, batch=args.batch, repeats=5)
    print(f"hardest-negative mining at batch {args.batch}: vectorised {vectorised * 1e6:.0f} us, "
          f"per-sample loop {looped * 1e6:.0f} us: {looped / vectorised:.0f}x faster (target >= 20)")


if __name__ == "__main__":
    main()
