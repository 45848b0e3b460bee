"""FLOPs of one image through a network, counted by `torch.utils.flop_counter` on the network itself.

A cost that does not depend on how fast this machine happens to be: divided by an accelerator's
sustained FLOP rate it gives images per second (the timeline's `throughput: flops`, and
`report --accelerator-tflops`). A training step is billed at three forwards (forward, and a backward
of about twice the forward's FLOPs), the usual estimate (Kaplan et al. 2020).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

TRAIN_STEP_FORWARDS = 3  # forward + backward (about 2x the forward) per training image


def forward_flops(model: torch.nn.Module, sample_shape: tuple[int, ...]) -> int:
    """FLOPs (multiply and add counted apart) of one sample of `sample_shape` (no batch dimension) through `model`.

    Counted on the model itself in eval mode, without gradients, with a batch of two divided by two (no copy:
    a generation's weights are never held twice for this); its training mode is restored after, and eval-mode
    batch norm changes no statistic.
    """
    training = model.training
    device = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.zeros((2, *sample_shape), dtype=torch.float32, device=device)
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(training)
    return int(counter.get_total_flops() // 2)


def images_per_second(flops_per_image: float, *, tflops: float, utilization: float, train: bool = False) -> float:
    """Images per second on one accelerator of `tflops` peak at `utilization`, for an embedding forward or a training step."""
    if flops_per_image <= 0:
        raise ValueError("flops_per_image must be > 0")
    per_image = flops_per_image * (TRAIN_STEP_FORWARDS if train else 1)
    return tflops * 1e12 * utilization / per_image
