"""CIFAR-10 / CIFAR-100 through torchvision: read from the root, downloaded there only when `download: true`."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field

from cvstream.errors import DataError
from cvstream.registry import Params
from cvstream.sessions.datasets import DATASETS, DatasetSource, LabelSet
from cvstream.sessions.datasets.cache import cached_array, fingerprint
from cvstream.sessions.paths import resolve


class CifarParams(Params):
    root: str | None = Field(None, description="the folder that holds (or will hold) the extracted python archive; default the data set's name")
    download: bool = Field(False, description="fetch the archive from the internet into the root when it is missing")


class _Cifar(DatasetSource):
    Params = CifarParams
    folder_name: ClassVar[str]
    archive: ClassVar[str]
    files: ClassVar[tuple[str, ...]]

    @property
    def folder(self) -> Path:
        return resolve(self.params.root or self.name, self.data_root)

    def _missing(self) -> list[str]:
        base = self.folder / self.folder_name
        return [f for f in self.files if not (base / f).is_file()]

    def check(self) -> None:
        missing = self._missing()
        if missing and not self.params.download:
            raise DataError(
                f"{self.name}: {self.folder / self.folder_name} lacks {', '.join(missing)}; unpack {self.archive} into "
                f"{self.folder}, or set dataset.download: true where the machine has internet",
                key_path="dataset.root",
            )

    def _torchvision(self, train: bool):
        from torchvision import datasets

        self.check()
        cls = datasets.CIFAR10 if self.name == "cifar10" else datasets.CIFAR100
        try:
            return cls(str(self.folder), train=train, download=self.params.download and bool(self._missing()))
        except RuntimeError as exc:  # torchvision's word for missing or failing its checksum
            raise DataError(f"{self.name}: {exc} (in {self.folder})", key_path="dataset.root") from None
        except OSError as exc:  # no internet, or a root we may not write
            raise DataError(f"{self.name}: cannot download into {self.folder}: {exc}", key_path="dataset.download") from None

    def label_set(self) -> LabelSet:
        train, test = self._torchvision(True), self._torchvision(False)
        labels = np.concatenate([np.asarray(train.targets), np.asarray(test.targets)]).astype(np.int64)
        test_mask = np.arange(len(labels)) >= len(train.targets)
        return LabelSet(labels=labels, class_names=tuple(train.classes), test_mask=test_mask)

    def images(self) -> np.ndarray:
        self.check()
        key = fingerprint(*(self.folder / self.folder_name / f for f in self.files))

        def build() -> np.ndarray:
            data = np.concatenate([self._torchvision(True).data, self._torchvision(False).data])
            return data.transpose(0, 3, 1, 2)  # NHWC -> NCHW

        return cached_array(self.cache_dir, f"{self.name}-{key}", build)


@DATASETS.register("cifar10")
class Cifar10Source(_Cifar):
    folder_name = "cifar-10-batches-py"
    archive = "cifar-10-python.tar.gz"
    files = ("batches.meta", *(f"data_batch_{k}" for k in range(1, 6)), "test_batch")


@DATASETS.register("cifar100")
class Cifar100Source(_Cifar):
    folder_name = "cifar-100-python"
    archive = "cifar-100-python.tar.gz"
    files = ("meta", "train", "test")
