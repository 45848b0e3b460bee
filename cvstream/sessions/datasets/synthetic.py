"""Generated images: per-class prototypes built from shared parts, deformed and noised per sample.

Classes share parts, samples carry a distractor part and strong geometric jitter, so an
untrained network retrieves poorly and a trained one has something to learn. Each class
is a pure function of (seed, class id): any number of classes, any resolution.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from cvstream.registry import Params
from cvstream.sessions.datasets import DATASETS, DatasetSource, LabelSet
from cvstream.sessions.rng import torch_generator


class SyntheticParams(Params):
    classes: int = Field(100, ge=2, le=1_000_000)
    samples_per_class: int = Field(60, ge=2, le=100_000)
    image_size: int = Field(32, ge=8, le=512)
    channels: int = Field(3, ge=1, le=3)
    parts: int = Field(24, ge=2, description="shared parts that prototypes are built from")
    noise: float = Field(0.12, ge=0, le=1, description="std of the per-pixel Gaussian noise")
    deformation: float = Field(1.0, ge=0, le=3, description="scale of the per-sample affine jitter")
    clutter: float = Field(0.8, ge=0, le=3, description="strength of the background made of other classes' parts")


def _smooth_patterns(count: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(count, channels, 5, 5, generator=generator)
    fine = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return torch.tanh(2.0 * fine)  # blobs with edges, in [-1, 1]


@DATASETS.register("synthetic")
class SyntheticSource(DatasetSource):
    Params = SyntheticParams

    def label_set(self) -> LabelSet:
        p = self.params
        labels = np.repeat(np.arange(p.classes, dtype=np.int64), p.samples_per_class)
        names = tuple(f"class{c:0{len(str(p.classes - 1))}d}" for c in range(p.classes))
        return LabelSet(labels=labels, class_names=names)

    def images(self) -> np.ndarray:
        p = self.params
        out = np.empty((p.classes * p.samples_per_class, p.channels, p.image_size, p.image_size), dtype=np.uint8)
        parts = _smooth_patterns(p.parts, p.channels, p.image_size, torch_generator(self.seed, "synthetic/parts"))
        for c in range(p.classes):
            start = c * p.samples_per_class
            out[start : start + p.samples_per_class] = self.class_images(c, parts)
        return out

    def class_images(self, class_id: int, parts: torch.Tensor) -> np.ndarray:
        p = self.params
        g = torch_generator(self.seed, "synthetic/class", class_id)
        n, size = p.samples_per_class, p.image_size
        # Prototype: two shared parts with class-specific weights plus a fainter class-own pattern.
        chosen = torch.randperm(p.parts, generator=g)[:2]
        weights = torch.rand(2, 1, 1, 1, generator=g) * 0.6 + 0.7
        own = _smooth_patterns(1, p.channels, size, g)[0]
        prototype = (weights * parts[chosen]).sum(0) / 2 + 0.4 * own
        # Per sample: rotation, zoom and placement, then clutter made of other parts, contrast, noise.
        d = p.deformation
        angle = (torch.rand(n, generator=g) - 0.5) * (math.pi / 3) * d
        scale = 1.6 + (torch.rand(n, generator=g) - 0.5) * 0.6 * d  # > 1: the pattern covers part of the frame
        shift = (torch.rand(n, 2, generator=g) - 0.5) * 1.2 * d
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, (n, p.channels, size, size), align_corners=False)
        warped = F.grid_sample(prototype.expand(n, -1, -1, -1), grid, padding_mode="zeros", align_corners=False)
        support = F.grid_sample(torch.ones(n, 1, size, size), grid, padding_mode="zeros", align_corners=False)
        clutter = torch.zeros_like(warped)
        for _ in range(2):
            picked = parts[torch.randint(p.parts, (n,), generator=g)]
            rolls = torch.randint(size, (2,), generator=g)
            picked = torch.roll(picked, shifts=(int(rolls[0]), int(rolls[1])), dims=(2, 3))
            clutter += picked * (torch.rand(n, 1, 1, 1, generator=g) * p.clutter)
        contrast = 0.7 + torch.rand(n, 1, 1, 1, generator=g) * 0.6
        image = contrast * (support * warped + (1 - 0.5 * support) * clutter)
        image = image + p.noise * 2 * torch.randn(warped.shape, generator=g)
        image = (image * 0.35 + 0.5).clamp(0, 1)
        return (image * 255).round().to(torch.uint8).numpy()
