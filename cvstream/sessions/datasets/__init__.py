"""Data sets: labels first (cheap, for validation and stream building), images when training starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from cvstream.registry import Params, Registry


@dataclass(frozen=True)
class LabelSet:
    """What a stream needs to know about a data set: one label per sample and the class names."""

    labels: np.ndarray  # int64 (N,), original class ids 0..C-1
    class_names: tuple[str, ...]
    test_mask: np.ndarray | None = None  # an official held-out split, if the data set has one
    file_names: tuple[str, ...] | None = None  # per sample, relative to the data set's root (for JSON collections)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class DatasetSource:
    """A data set adapter. Subclasses register under a name and declare their Params."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]]
    augment_by_default: ClassVar[bool] = True
    flip_ok: ClassVar[bool] = True
    # Published per-channel pixel (mean, std) in [0, 1] for `training.input_scaling: mean-std`; None: measured on the images.
    pixel_stats: ClassVar[tuple[tuple[float, ...], tuple[float, ...]] | None] = None

    def __init__(self, params: Params, *, data_root: Path, cache_dir: Path, seed: int):
        self.params = params
        self.data_root = data_root
        self.cache_dir = cache_dir
        self.seed = seed

    def check(self) -> None:
        """Raise DataError if the files are missing; called by `cvstream validate`."""

    def label_set(self) -> LabelSet:
        raise NotImplementedError

    def images(self) -> np.ndarray:
        """uint8 array (N, C, H, W) aligned with label_set().labels, may be memory-mapped.

        The `features` source returns float32 (N, D) vectors instead."""
        raise NotImplementedError


DATASETS: Registry[DatasetSource] = Registry("dataset")

# Registration happens on import.
from cvstream.sessions.datasets import (  # noqa: E402,F401
    cifar,
    fashion_mnist,
    features,
    image_folder,
    omniglot,
    synthetic,
    tiny_imagenet,
)
