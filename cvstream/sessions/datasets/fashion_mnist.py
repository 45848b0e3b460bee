"""Fashion-MNIST (Xiao et al. 2017): 10 clothing classes, 60,000 training and 10,000 test images, 28x28 grey.

Reads the four original IDX files, gzipped or not, from the root or from the
`FashionMNIST/raw/` folder torchvision uses; the test files are the official query split.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from pydantic import Field

from cvstream.errors import DataError
from cvstream.registry import Params
from cvstream.sessions.datasets import DATASETS, DatasetSource, LabelSet
from cvstream.sessions.datasets.cache import cached_array, fingerprint
from cvstream.sessions.datasets.imaging import resize
from cvstream.sessions.paths import resolve

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_PARTS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (unsigned bytes), gzipped or not, as a numpy array of its declared shape."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"fashion-mnist: cannot read {path}: {exc}", key_path="dataset.root") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"fashion-mnist: {path} is not an IDX file of unsigned bytes", key_path="dataset.root")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise DataError(
            f"fashion-mnist: {path} declares shape {shape} ({expected} bytes) but holds {len(data) - header}: truncated or corrupt",
            key_path="dataset.root",
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


class FashionMnistParams(Params):
    root: str = "fashion-mnist"
    image_size: int = Field(28, ge=8, le=256)


@DATASETS.register("fashion-mnist")
class FashionMnistSource(DatasetSource):
    Params = FashionMnistParams
    flip_ok = True

    @property
    def folder(self) -> Path:
        return resolve(self.params.root, self.data_root)

    def _file(self, stem: str) -> Path:
        for folder in (self.folder, self.folder / "FashionMNIST" / "raw"):
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    return folder / name
        raise DataError(
            f"fashion-mnist: {stem}[.gz] not found in {self.folder}; it needs train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            f"t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (gzipped or not)",
            key_path="dataset.root",
        )

    def _files(self) -> list[Path]:
        return [self._file(stem) for pair in _PARTS.values() for stem in pair]

    def check(self) -> None:
        self._files()

    def label_set(self) -> LabelSet:
        labels = [read_idx(self._file(_PARTS[part][1])).astype(np.int64) for part in _PARTS]
        if labels[0].ndim != 1 or labels[1].ndim != 1 or max(labels[0].max(), labels[1].max()) >= len(CLASS_NAMES):
            raise DataError(f"fashion-mnist: the label files in {self.folder} do not hold labels 0..9", key_path="dataset.root")
        test_mask = np.concatenate([np.zeros(len(labels[0]), bool), np.ones(len(labels[1]), bool)])
        return LabelSet(labels=np.concatenate(labels), class_names=CLASS_NAMES, test_mask=test_mask)

    def images(self) -> np.ndarray:
        files = self._files()
        key = f"fashion-mnist-{self.params.image_size}-{fingerprint(*files)}"
        return cached_array(self.cache_dir, key, self._decode)

    def _decode(self) -> np.ndarray:
        parts = []
        for part, (image_stem, label_stem) in _PARTS.items():
            images = read_idx(self._file(image_stem))
            n_labels = len(read_idx(self._file(label_stem)))
            if images.ndim != 3 or len(images) != n_labels:
                raise DataError(f"fashion-mnist: {part} images of shape {images.shape} do not match {n_labels} labels", key_path="dataset.root")
            parts.append(images[:, None])
        return resize(np.concatenate(parts), self.params.image_size)
