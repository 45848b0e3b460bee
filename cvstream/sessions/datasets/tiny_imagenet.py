"""Tiny ImageNet-200 in its official layout (any resolution), as a folder or a `.tar.gz` of it.

An archive is unpacked once into the cache, never into the data root. Classes are the
WordNet ids of `wnids.txt` in file order; `val/` is the official query split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydantic import Field

from cvstream.errors import DataError
from cvstream.registry import Params
from cvstream.sessions.datasets import DATASETS, DatasetSource, LabelSet
from cvstream.sessions.datasets.cache import cached_array, fingerprint, unpacked
from cvstream.sessions.datasets.imaging import decode
from cvstream.sessions.paths import resolve

_ARCHIVES = (".tar.gz", ".tgz", ".tar")


class TinyImagenetParams(Params):
    root: str = Field("tiny-imagenet-200", description="the folder holding wnids.txt, a parent of it, or a .tar.gz of it")
    image_size: int | None = Field(None, ge=8, le=512, description="resize to this size; default the files' own")


@DATASETS.register("tiny-imagenet")
class TinyImagenetSource(DatasetSource):
    pixel_stats = ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262))  # of the 64x64 originals, as the CVS code normalises
    Params = TinyImagenetParams

    def folder(self) -> Path:
        """The folder that holds wnids.txt, unpacking an archive into the cache if that is what the root names."""
        root = resolve(self.params.root, self.data_root)
        if root.is_file() and root.name.endswith(_ARCHIVES):
            return self._layout_in(unpacked(root, self.cache_dir), origin=root)
        if root.is_dir():
            archives = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(_ARCHIVES))
            if not (root / "wnids.txt").is_file() and len(archives) == 1 and not any(p.is_dir() for p in root.iterdir()):
                return self._layout_in(unpacked(archives[0], self.cache_dir), origin=archives[0])
            return self._layout_in(root, origin=root)
        raise DataError(
            f"tiny-imagenet: {root} not found; point dataset.root at the tiny-imagenet-200 folder or a .tar.gz of it "
            "(relative roots resolve against --data-root, $CVSTREAM_DATA, ~/.cache/cvstream)",
            key_path="dataset.root",
        )

    @staticmethod
    def _layout_in(folder: Path, *, origin: Path) -> Path:
        for candidate in (folder, *sorted(p for p in folder.iterdir() if p.is_dir())):
            if (candidate / "wnids.txt").is_file():
                return candidate
        raise DataError(f"tiny-imagenet: no wnids.txt in {origin}; expected the official tiny-imagenet-200 layout", key_path="dataset.root")

    def check(self) -> None:
        self._listing()

    def _listing(self) -> tuple[Path, list[str], np.ndarray, np.ndarray, tuple[str, ...]]:
        """(folder, relative file names, labels, test mask, wnids)."""
        folder = self.folder()
        wnids = tuple(line.strip() for line in (folder / "wnids.txt").read_text().splitlines() if line.strip())
        index = {w: i for i, w in enumerate(wnids)}
        names, labels = [], []
        for i, wnid in enumerate(wnids):
            images = folder / "train" / wnid / "images"
            if not images.is_dir():
                raise DataError(f"tiny-imagenet: {images} not found (class {wnid} of wnids.txt)", key_path="dataset.root")
            files = sorted(entry.name for entry in os.scandir(images) if entry.is_file())
            names.extend(f"train/{wnid}/images/{f}" for f in files)
            labels.extend([i] * len(files))
        n_train = len(names)
        annotations = folder / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise DataError(f"tiny-imagenet: {annotations} not found; the val split is the query set", key_path="dataset.root")
        for k, line in enumerate(annotations.read_text().splitlines()):
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise DataError(f"tiny-imagenet: {annotations} line {k + 1} names no class of wnids.txt: {line!r}", key_path="dataset.root")
            names.append(f"val/images/{fields[0]}")
            labels.append(index[fields[1]])
        test_mask = np.arange(len(names)) >= n_train
        return folder, names, np.asarray(labels, dtype=np.int64), test_mask, wnids

    def label_set(self) -> LabelSet:
        _, names, labels, test_mask, wnids = self._listing()
        return LabelSet(labels=labels, class_names=wnids, test_mask=test_mask, file_names=tuple(names))

    def images(self) -> np.ndarray:
        folder, names, _, _, _ = self._listing()
        key = fingerprint(folder / "wnids.txt", folder / "val" / "val_annotations.txt", extra=f"{folder}|{len(names)}")
        size = self.params.image_size
        return cached_array(
            self.cache_dir, f"tiny-imagenet-{size or 'native'}-{key}",
            lambda: decode([folder / n for n in names], size=size, channels=3, what="tiny-imagenet"),
        )
