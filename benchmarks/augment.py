"""What the official recipe's augmentation costs: crop and flip, and RandAugment, on a batch of decoded images.

    python benchmarks/augment.py [--repeats 20] [--threads 1]

RandAugment (`training.randaugment`) runs once per operation over the images of a batch that drew
it (cvstream.models.augment.rand_augment); the same operations applied one image at a time, as a
per-image loader would, are timed beside it. Both are set against one training step of ResNet-18
at 64x64, batch 64, in float32 and in bfloat16 with channels-last (benchmarks/cpu_precision.py's
step), so the printed share is what the augmentation adds to a step. CPU seconds of this process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cpu_precision import VARIANTS, cpu_description, step_seconds  # noqa: E402

from cvstream.models.augment import crop_flip, rand_augment  # noqa: E402
from cvstream.models.trainer import cpu_has_bf16  # noqa: E402


def seconds(action, repeats: int) -> float:
    action()
    started = time.process_time()
    for _ in range(repeats):
        action()
    return (time.process_time() - started) / repeats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_description())
    batch = torch.randint(0, 256, (64, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    crop = seconds(lambda: crop_flip(batch, generator, padding="zeros"), args.repeats)
    batched = seconds(lambda: rand_augment(batch, generator), args.repeats)
    one_by_one = seconds(lambda: [rand_augment(image[None], generator) for image in batch], max(1, args.repeats // 4))
    print(f"batch of 64 images, 3x64x64, {args.threads} thread(s), CPU ms per batch:")
    print(f"  crop (black padding 4) and flip   {crop * 1e3:7.1f}")
    print(f"  RandAugment, batched              {batched * 1e3:7.1f}")
    print(f"  RandAugment, one image at a time  {one_by_one * 1e3:7.1f}   ({one_by_one / batched:.1f}x the batched)")
    variants = ["float32", "bf16 + channels-last"] if cpu_has_bf16() else ["float32"]
    for name in variants:
        step = step_seconds("resnet18", VARIANTS[name], steps=3)
        share = (crop + batched) / (step + crop + batched)
        print(f"  training step, ResNet-18, {name:22s} {step * 1e3:7.1f}   augmentation's share of a step: {share:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
