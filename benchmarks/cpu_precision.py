"""One training step on the CPU in float32, under bfloat16 autocast, and with channels-last: what each pays.

    python benchmarks/cpu_precision.py [--steps 5] [--threads 1] [--only resnet18,convnet]

A step is what the trainer does per batch: forward, the cosine-classifier loss, backward, SGD
step; batch 64, CPU seconds of one torch thread, median of `--steps` after two warm-up steps.
ResNet-18 (ImageNet form, `resnet18`) at 64x64x3 and the convnet (width 16) at 28x28x1, each as
float32, bfloat16 autocast, bfloat16 + channels-last inputs, and bfloat16 + channels-last inputs
and weights. bfloat16 runs only where the CPU has it natively (`cpu_has_bf16`).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cvstream.models import build_model  # noqa: E402
from cvstream.models.trainer import cpu_has_bf16  # noqa: E402
from cvstream.scenario import Scenario  # noqa: E402

CLOCK = time.process_time
MODELS = {  # name -> (backbone, width, channels, image size)
    "resnet18": ("resnet18", 64, 3, 64),
    "convnet": ("convnet", 16, 1, 28),
}
VARIANTS = {  # name -> (bfloat16 autocast, channels-last inputs, channels-last weights)
    "float32": (False, False, False),
    "float32 + channels-last": (False, True, True),
    "bf16": (True, False, False),
    "bf16 + channels-last inputs": (True, True, False),
    "bf16 + channels-last": (True, True, True),
}


def cpu_description() -> str:
    """The CPU a timing ran on: /proc/cpuinfo's model name and whether its flags have avx512_bf16 and amx_bf16."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    has = {flag: "yes" if flag in flags else "no" for flag in ("avx512_bf16", "amx_bf16")}
    return f"CPU: {fields.get('model name') or platform.processor() or 'unknown'} (avx512_bf16: {has['avx512_bf16']}, amx_bf16: {has['amx_bf16']})"


def network(name: str, *, channels_last: bool = False) -> torch.nn.Module:
    """`name`'s network (MODELS) with a 100-class cosine classifier, its conv weights channels-last if asked."""
    backbone, width, channels, size = MODELS[name]
    scenario = Scenario.from_dict({
        "name": "step", "seed": 0, "device": "cpu",
        "dataset": {"name": "synthetic", "classes": 10, "samples_per_class": 10, "image_size": size, "channels": channels},
        "stream": {"setup": "disjoint", "sessions": 1, "initial_classes": 10, "classes_per_session": 10},
        "model": {"backbone": backbone, "embedding_dim": 128, "width": width},
        "method": {"name": "finetune"},
    })
    model = build_model(scenario, in_channels=channels)
    model.add_classes(torch.arange(100), torch.Generator().manual_seed(0))
    return model.to(memory_format=torch.channels_last) if channels_last else model


def images(name: str, n: int, *, channels_last: bool = False, seed: int = 0) -> torch.Tensor:
    """`n` random inputs of `name`'s shape."""
    _, _, channels, size = MODELS[name]
    x = torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def training_step(model: torch.nn.Module, *, bf16: bool, channels_last: bool, name: str, batch: int = 64, forward=None):
    """One step as the trainer takes it (forward, cosine-classifier loss, backward, SGD), on a fixed batch; `forward`
    stands in for the model's own call (a compiled one, say)."""
    forward = model if forward is None else forward
    x = images(name, batch, channels_last=channels_last)
    rows = model.rows_of(torch.randint(0, 100, (batch,), generator=torch.Generator().manual_seed(1)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step() -> None:
        with autocast(bf16):
            loss = F.cross_entropy(model.cosine(forward(x)) / 0.05, rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def step_seconds(name: str, variant: tuple[bool, bool, bool], *, steps: int, batch: int = 64) -> float:
    bf16, cl_inputs, cl_weights = variant
    model = network(name, channels_last=cl_weights)
    model.train()
    step = training_step(model, bf16=bf16, channels_last=cl_inputs, name=name, batch=batch)
    times = []
    for i in range(steps + 2):
        started = CLOCK()
        step()
        if i >= 2:
            times.append(CLOCK() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default=",".join(MODELS), help="comma-separated models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    native = cpu_has_bf16()
    print(cpu_description())
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bfloat16: {native}; one step, batch 64, median of {args.steps}")
    for name in args.only.split(","):
        base = None
        for variant, flags in VARIANTS.items():
            if flags[0] and not native:
                print(f"{name:10s} {variant:30s}  skipped (no native bfloat16)")
                continue
            seconds = step_seconds(name, flags, steps=args.steps)
            base = base or seconds
            print(f"{name:10s} {variant:30s} {seconds:7.3f} s   x{base / seconds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
