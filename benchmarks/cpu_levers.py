"""Two CPU levers measured: `torch.compile` of the network, and the embedding batch size.

    python benchmarks/cpu_levers.py [--steps 7] [--threads 1] [--skip-compile] [--skip-batch]

The network is the one the session-time comparison trains (`resnet18`, ImageNet form, 64x64x3,
128-d), in the layout cvstream uses on this CPU (bfloat16 autocast and channels-last where the CPU
has native bfloat16, else float32).

- compile: a training step (forward, cosine-classifier loss, backward, SGD; batch 64) of the eager
  network against `torch.compile(network)` (inductor, default mode): the seconds of the first
  compiled step (compilation), the median step after it, and the steps a session must run to repay
  the compilation. Also the embedding forward (eval, no grad, batch 512). Compilation runs in this
  process (`TORCHINDUCTOR_COMPILE_THREADS=1`), so its CPU seconds are counted; wall seconds too.
- embedding batch size: images per CPU second of the eval forward at batch 64 ... 2048.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cpu_precision import autocast, images, network, training_step  # noqa: E402
from cvstream.models.trainer import cpu_has_bf16  # noqa: E402

NAME = "resnet18"  # cpu_precision.MODELS: ImageNet-form ResNet-18 at 64x64x3


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def train_steps(model: torch.nn.Module, forward, *, steps: int, bf16: bool) -> tuple[tuple[float, float], float]:
    """(CPU, wall) seconds of the first step, and the median CPU seconds of `steps` steps after two more."""
    model.train()
    step = training_step(model, bf16=bf16, channels_last=bf16, name=NAME, forward=forward)
    first = timed(step)
    times = [timed(step)[0] for _ in range(steps + 2)][2:]
    return first, statistics.median(times)


def embed_seconds(forward, model: torch.nn.Module, *, n: int, size: int, bf16: bool, repeats: int) -> tuple[tuple[float, float], float]:
    """(CPU, wall) of the first embedding pass over `n` images in batches of `size`, and the median CPU of the rest."""
    model.eval()
    x = images(NAME, n, channels_last=bf16, seed=2)

    @torch.no_grad()
    def run():
        for start in range(0, n, size):
            with autocast(bf16):
                f = forward(x[start : start + size])
            F.normalize(f.float(), dim=1)

    first = timed(run)
    return first, statistics.median(timed(run)[0] for _ in range(repeats))


def compile_lever(steps: int, bf16: bool) -> None:
    eager_model = network(NAME, channels_last=bf16)
    (_, _), eager = train_steps(eager_model, eager_model, steps=steps, bf16=bf16)
    compiled_model = network(NAME, channels_last=bf16)
    compiled = torch.compile(compiled_model)
    (first_cpu, first_wall), steady = train_steps(compiled_model, compiled, steps=steps, bf16=bf16)
    saved = eager - steady
    repay = f"{(first_cpu - steady) / saved:,.0f} steps" if saved > 0 else "never (no step is faster)"
    print(f"train step, batch 64: eager {eager:.3f} s, compiled {steady:.3f} s (x{eager / steady:.2f}); "
          f"first compiled step {first_cpu:.1f} s CPU / {first_wall:.1f} s wall; repaid after {repay}")
    (_, _), eager_e = embed_seconds(eager_model, eager_model, n=1024, size=512, bf16=bf16, repeats=3)
    (first_cpu, first_wall), steady_e = embed_seconds(compiled, compiled_model, n=1024, size=512, bf16=bf16, repeats=3)
    saved = eager_e - steady_e
    repay = f"{(first_cpu - steady_e) / saved * 1024:,.0f} images" if saved > 0 else "never"
    print(f"embedding 1,024 images, batch 512: eager {eager_e:.3f} s, compiled {steady_e:.3f} s (x{eager_e / steady_e:.2f}); "
          f"first compiled pass {first_cpu:.1f} s CPU / {first_wall:.1f} s wall; repaid after {repay}")


def batch_lever(bf16: bool, repeats: int) -> None:
    model = network(NAME, channels_last=bf16)
    n = 2048
    rates = {}
    for size in (64, 128, 256, 512, 1024, 2048):
        _, seconds = embed_seconds(model, model, n=n, size=size, bf16=bf16, repeats=repeats)
        rates[size] = n / seconds
    base = rates[512]
    for size, rate in rates.items():
        print(f"embedding batch {size:5d}: {rate:7.1f} images per CPU s   x{rate / base:.2f} of batch 512")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--float32", action="store_true", help="measure float32 even where the CPU has bfloat16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bf16 = cpu_has_bf16() and not args.float32
    print(f"torch {torch.__version__}, {args.threads} thread(s), resnet18 64x64x3, "
          f"{'bfloat16 autocast + channels-last' if bf16 else 'float32'}")
    if not args.skip_batch:
        batch_lever(bf16, args.repeats)
    if not args.skip_compile:
        compile_lever(args.steps, bf16)
    return 0


if __name__ == "__main__":
    sys.exit(main())
