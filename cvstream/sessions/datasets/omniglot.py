"""Omniglot (Lake et al. 2015): 1,623 handwritten characters, 20 drawings each.

Reads `images_background.npz` and `images_evaluation.npz` (bool arrays, True is
background); ink becomes bright on a dark ground, downsampled once to `image_size`
and cached as uint8 in the cache directory.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from cvstream.errors import DataError
from cvstream.registry import Params
from cvstream.sessions.datasets import DATASETS, DatasetSource, LabelSet
from cvstream.sessions.datasets.cache import cached_array, fingerprint
from cvstream.sessions.paths import resolve

_FILES = {"background": "images_background.npz", "evaluation": "images_evaluation.npz"}
_BACKGROUND_CLASSES = 964


class OmniglotParams(Params):
    root: str = "omniglot"
    image_size: int = Field(32, ge=8, le=105)
    subset: Literal["all", "background", "evaluation"] = "all"


@DATASETS.register("omniglot")
class OmniglotSource(DatasetSource):
    Params = OmniglotParams
    augment_by_default = False  # glyphs: a flip or crop changes the character
    flip_ok = False

    @property
    def folder(self) -> Path:
        return resolve(self.params.root, self.data_root)

    def _parts(self) -> list[str]:
        return list(_FILES) if self.params.subset == "all" else [self.params.subset]

    def check(self) -> None:
        for part in self._parts():
            path = self.folder / _FILES[part]
            if not path.is_file():
                raise DataError(
                    f"omniglot: {path} not found; put images_background.npz and images_evaluation.npz "
                    f"in {self.folder} (dataset.root resolves against --data-root, $CVSTREAM_DATA, ~/.cache/cvstream)",
                    key_path="dataset.root",
                )

    def _load(self, part: str, key: str) -> np.ndarray:
        path = self.folder / _FILES[part]
        try:
            with np.load(path, allow_pickle=False) as archive:
                return archive[key]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"omniglot: cannot read {key!r} from {path}: {exc}") from None

    def _images_shape(self, part: str) -> tuple[int, ...]:
        """The shape of the images array, read from its .npy header without loading it."""
        path = self.folder / _FILES[part]
        try:
            with zipfile.ZipFile(path) as archive, archive.open("images.npy") as member:
                version = np.lib.format.read_magic(member)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, _ = read_header(member)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"omniglot: cannot read 'images' from {path}: {exc}") from None
        if len(shape) != 4:
            raise DataError(f"omniglot: {path} holds images of shape {shape}, expected (chars, 20, H, W)")
        return tuple(shape)

    def label_set(self) -> LabelSet:
        self.check()
        labels = []
        for part in self._parts():
            raw = self._load(part, "labels").astype(np.int64)
            shape = self._images_shape(part)
            expected = np.repeat(np.arange(shape[0]), shape[1]).reshape(shape[:2])
            if raw.shape != shape[:2] or not np.array_equal(raw, expected):
                raise DataError(
                    f"omniglot: {self.folder / _FILES[part]}: its labels (shape {raw.shape}) disagree with its images "
                    f"(shape {shape}); label i must be character i in every row"
                )
            offset = _BACKGROUND_CLASSES if part == "evaluation" else 0
            labels.append(raw.reshape(-1) + offset)
        labels = np.concatenate(labels)
        first = int(labels.min())
        labels = labels - first  # class ids are 0..C-1 within the chosen subset
        names = tuple(f"char{first + c:04d}" for c in range(int(labels.max()) + 1))
        return LabelSet(labels=labels, class_names=names)

    def images(self) -> np.ndarray:
        self.check()
        size = self.params.image_size
        key = fingerprint(*(self.folder / _FILES[part] for part in self._parts()))
        return cached_array(self.cache_dir, f"omniglot-{self.params.subset}-{size}-{key}", self._decode)

    def _decode(self) -> np.ndarray:
        size = self.params.image_size
        chunks = []
        for part in self._parts():
            raw = self._load(part, "images")
            if raw.ndim != 4 or raw.shape[1] != 20:
                raise DataError(f"omniglot: {self.folder / _FILES[part]} holds images of shape {raw.shape}, expected (chars, 20, H, W)")
            flat = raw.reshape(-1, 1, raw.shape[2], raw.shape[3])
            for start in range(0, len(flat), 4096):
                ink = torch.from_numpy(~flat[start : start + 4096]).float()
                small = F.interpolate(ink, size=(size, size), mode="area") if size != ink.shape[-1] else ink
                chunks.append((small * 255).round().to(torch.uint8).numpy())
        return np.concatenate(chunks)
