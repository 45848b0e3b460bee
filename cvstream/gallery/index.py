"""The gallery: a Faiss index over L2-normalised vectors with stable int64 item ids, plus metadata.

A session adds only its new items. Under backfill policy `none` a stored vector never
changes. Metadata arrays grow by doubling, so an update costs what its new items cost.
"""

from __future__ import annotations

import faiss
import numpy as np
import pandas as pd


class _Column:
    """A 1-d array that grows by doubling."""

    def __init__(self, dtype, fill=0):
        self._data = np.full(1024, fill, dtype=dtype)
        self._fill = fill
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.size + len(values)
        if need > len(self._data):
            grown = np.full(max(need, 2 * len(self._data)), self._fill, dtype=self._data.dtype)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : need] = values
        self.size = need

    @property
    def values(self) -> np.ndarray:
        return self._data[: self.size]


class Gallery:
    def __init__(self, dim: int, *, index: str = "flat"):
        if index != "flat":
            raise ValueError(f"unsupported index {index!r}")
        self.dim = dim
        self.index_type = index
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._sample_ids = _Column(np.int64)
        self._class_ids = _Column(np.int64)
        self._session_added = _Column(np.int64)
        self._generation = _Column(np.int64)
        self._backfilled_at = _Column(np.int64, fill=-1)
        # Running per-class sums of the stored vectors, for class means without a pass over the gallery.
        self._class_sum = np.zeros((0, dim), dtype=np.float64)
        self._class_count = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self._sample_ids.size

    def add(self, vectors: np.ndarray, *, sample_ids: np.ndarray, class_ids: np.ndarray, session: int, generation: int) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        n = len(vectors)
        item_ids = np.arange(len(self), len(self) + n, dtype=np.int64)
        self.index.add_with_ids(vectors, item_ids)
        self._sample_ids.extend(np.asarray(sample_ids, dtype=np.int64))
        self._class_ids.extend(np.asarray(class_ids, dtype=np.int64))
        self._session_added.extend(np.full(n, session, dtype=np.int64))
        self._generation.extend(np.full(n, generation, dtype=np.int64))
        self._backfilled_at.extend(np.full(n, -1, dtype=np.int64))
        self._accumulate(np.asarray(class_ids, dtype=np.int64), vectors.astype(np.float64), sign=1)
        return item_ids

    def _accumulate(self, class_ids: np.ndarray, vectors: np.ndarray, *, sign: int) -> None:
        top = int(class_ids.max()) + 1 if len(class_ids) else 0
        if top > len(self._class_count):
            self._class_sum = np.vstack([self._class_sum, np.zeros((top - len(self._class_count), self.dim))])
            self._class_count = np.concatenate([self._class_count, np.zeros(top - len(self._class_count), np.int64)])
        np.add.at(self._class_sum, class_ids, sign * vectors)
        np.add.at(self._class_count, class_ids, sign)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product search: (scores, item ids), -1 where fewer than k items exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return self.index.search(queries, min(k, max(len(self), 1)))

    def vectors(self, item_ids: np.ndarray) -> np.ndarray:
        """The stored vectors of these items, exactly as indexed."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        return np.stack([self.index.reconstruct(int(i)) for i in item_ids]) if len(item_ids) else np.empty((0, self.dim), np.float32)

    def class_of(self, item_ids: np.ndarray) -> np.ndarray:
        classes = self._class_ids.values
        out = np.full(item_ids.shape, -1, dtype=np.int64)
        valid = item_ids >= 0
        out[valid] = classes[item_ids[valid]]
        return out

    def class_counts(self, class_ids: np.ndarray) -> np.ndarray:
        class_ids = np.asarray(class_ids, dtype=np.int64)
        out = np.zeros(len(class_ids), dtype=np.int64)
        known = class_ids < len(self._class_count)
        out[known] = self._class_count[class_ids[known]]
        return out

    def class_means(self, class_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean of the stored vectors of each class (float32) and whether the class has any item."""
        counts = self.class_counts(class_ids)
        means = np.zeros((len(class_ids), self.dim), dtype=np.float32)
        has = counts > 0
        idx = np.asarray(class_ids)[has]
        means[has] = (self._class_sum[idx] / counts[has, None]).astype(np.float32)
        return means, has

    def metadata(self) -> pd.DataFrame:
        backfilled = pd.array(self._backfilled_at.values, dtype="Int64")
        backfilled[self._backfilled_at.values < 0] = pd.NA
        return pd.DataFrame(
            {
                "item_id": np.arange(len(self), dtype=np.int64),
                "sample_id": self._sample_ids.values.copy(),
                "class_id": self._class_ids.values.copy(),
                "session_added": self._session_added.values.copy(),
                "generation": self._generation.values.copy(),
                "backfilled_at": backfilled,
            }
        )
