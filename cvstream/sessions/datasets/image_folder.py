"""One folder per class, any image format Pillow reads.

`root/<class>/...` (every image, queries split off by the stream), or `root/train/<class>/...`
with `root/val/<class>/...` or `root/test/<class>/...` as the official query split (the layout of
ImageNet and most downloads, and the one Rainbow-Memory and CVS collections name files in);
`query_split` chooses where both exist. Class names are the folder names, ids in sorted order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from cvstream.errors import DataError
from cvstream.registry import Params
from cvstream.sessions.datasets import DATASETS, DatasetSource, LabelSet
from cvstream.sessions.datasets.cache import cached_array
from cvstream.sessions.datasets.imaging import decode
from cvstream.sessions.paths import resolve

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ImageFolderParams(Params):
    root: str
    image_size: int = Field(32, ge=8, le=1024, description="images are centre-cropped to a square and resized to this")
    channels: int = Field(3, description="3 (RGB) or 1 (grey)")
    query_split: Literal["val", "test"] | None = Field(
        None, description="with root/train/, the folder of the official queries; default whichever of val/ and test/ exists"
    )


@DATASETS.register("image-folder")
class ImageFolderSource(DatasetSource):
    Params = ImageFolderParams

    @property
    def folder(self) -> Path:
        return resolve(self.params.root, self.data_root)

    def check(self) -> None:
        if self.params.channels not in (1, 3):
            raise DataError("image-folder: channels must be 1 or 3", key_path="dataset.channels")
        self._listing()

    def _listing(self) -> tuple[list[str], np.ndarray, np.ndarray | None, tuple[str, ...]]:
        root = self.folder
        if not root.is_dir():
            raise DataError(f"image-folder: {root} is not a folder (relative roots resolve against --data-root, $CVSTREAM_DATA)", key_path="dataset.root")
        query = self._query_split(root)
        split = query is not None
        parts = ["train", query] if split else [""]
        classes = sorted({p.name for part in parts for p in (root / part).iterdir() if p.is_dir()})
        if not classes:
            raise DataError(f"image-folder: {root} holds no class folders", key_path="dataset.root")
        index = {c: i for i, c in enumerate(classes)}
        names, labels, is_test = [], [], []
        for part in parts:
            for klass in classes:
                folder = root / part / klass
                if not folder.is_dir():
                    continue
                files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
                names.extend(p.relative_to(root).as_posix() for p in files)
                labels.extend([index[klass]] * len(files))
                is_test.extend([part == query] * len(files))
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
        if (counts == 0).any():
            raise DataError(f"image-folder: class folder {classes[int(np.argmin(counts))]!r} in {root} holds no images", key_path="dataset.root")
        test_mask = np.asarray(is_test, dtype=bool) if split else None
        return names, np.asarray(labels, dtype=np.int64), test_mask, tuple(classes)

    def _query_split(self, root: Path) -> str | None:
        """The folder of the official queries beside train/, or None for one folder per class at the top."""
        present = [name for name in ("val", "test") if (root / name).is_dir()]
        wanted = self.params.query_split
        if wanted is not None:
            if not (root / "train").is_dir() or wanted not in present:
                raise DataError(f"image-folder: query_split {wanted!r} needs {root}/train/ and {root}/{wanted}/", key_path="dataset.query_split")
            return wanted
        if (root / "train").is_dir() and present:
            if len(present) > 1:
                raise DataError(f"image-folder: {root} holds both val/ and test/ beside train/; set dataset.query_split", key_path="dataset.query_split")
            return present[0]
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        if folders and set(folders) <= {"train", "val", "test"}:  # split names, not classes: two classes 'train' and 'val' is never meant
            raise DataError(
                f"image-folder: {root} holds only the folders {', '.join(folders)}, which are split names, not classes; "
                "a split layout needs train/ with val/ or test/ beside it, each holding one folder per class",
                key_path="dataset.root",
            )
        return None

    def label_set(self) -> LabelSet:
        names, labels, test_mask, classes = self._listing()
        return LabelSet(labels=labels, class_names=classes, test_mask=test_mask, file_names=tuple(names))

    def images(self) -> np.ndarray:
        import hashlib

        names, _, _, _ = self._listing()
        root = self.folder
        digest = hashlib.sha256(str(root.resolve()).encode())
        for name in names:  # names, sizes and times: a changed file makes a new cache entry
            stat = (root / name).stat()
            digest.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        p = self.params
        key = f"image-folder-{p.image_size}-{p.channels}-{digest.hexdigest()[:12]}"
        return cached_array(self.cache_dir, key, lambda: decode([root / n for n in names], size=p.image_size, channels=p.channels, what="image-folder"))
