"""Precomputed feature vectors (Parquet or .npy) with labels, for feature-level runs at large scale.

`images()` returns float32 (N, D) vectors, not pictures : pair
this data set with a backbone that takes vectors. Class names are the labels as written
(strings, or integers as text), ids in sorted label order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from cvstream.errors import DataError
from cvstream.registry import Params
from cvstream.sessions.datasets import DATASETS, DatasetSource, LabelSet
from cvstream.sessions.datasets.cache import cached_array, fingerprint
from cvstream.sessions.paths import resolve

QUERY_VALUES = {"test", "query", "val"}


class FeaturesParams(Params):
    path: str = Field(..., description="a .parquet file (one row per sample) or a .npy array (N, D)")
    labels: str | None = Field(None, description=".npy: the labels file (N,), required; .parquet: the label column (default 'label')")
    feature_column: str | None = Field(None, description=".parquet: a column of vectors; default every numeric column but the labels")
    split_column: str | None = Field(None, description=".parquet: rows whose value is test, query or val form the official query split")


@DATASETS.register("features")
class FeaturesSource(DatasetSource):
    Params = FeaturesParams
    augment_by_default = False
    flip_ok = False

    @property
    def path(self) -> Path:
        return resolve(self.params.path, self.data_root)

    def check(self) -> None:
        if not self.path.is_file():
            raise DataError(f"features: {self.path} not found", key_path="dataset.path")
        if self.path.suffix not in (".parquet", ".npy"):
            raise DataError(f"features: {self.path} is neither .parquet nor .npy", key_path="dataset.path")
        if self.path.suffix == ".npy" and not self.params.labels:
            raise DataError("features: a .npy of vectors needs dataset.labels, a .npy of one label per row", key_path="dataset.labels")

    def _frame(self) -> pd.DataFrame:
        try:
            return pd.read_parquet(self.path)
        except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
            raise DataError(f"features: cannot read {self.path}: {exc}", key_path="dataset.path") from None

    def _npy(self, path: Path, *, what: str, mmap: bool = False) -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"features: cannot read the {what} {path}: {exc}", key_path=f"dataset.{what}") from None

    def _raw_labels(self) -> tuple[np.ndarray, np.ndarray | None]:
        self.check()
        if self.path.suffix == ".npy":
            labels = self._npy(resolve(self.params.labels, self.data_root), what="labels")
            return labels, None
        frame = self._frame()
        column = self.params.labels or "label"
        if column not in frame.columns:
            raise DataError(f"features: {self.path} has no label column {column!r}; columns: {', '.join(map(str, frame.columns))}", key_path="dataset.labels")
        test = None
        if self.params.split_column:
            if self.params.split_column not in frame.columns:
                raise DataError(f"features: {self.path} has no column {self.params.split_column!r}", key_path="dataset.split_column")
            test = frame[self.params.split_column].astype(str).str.lower().isin(QUERY_VALUES).to_numpy()
        return frame[column].to_numpy(), test

    def label_set(self) -> LabelSet:
        raw, test = self._raw_labels()
        if raw.ndim != 1:
            raise DataError(f"features: labels must be one per row, got shape {raw.shape}", key_path="dataset.labels")
        names, labels = np.unique(raw, return_inverse=True)
        return LabelSet(labels=labels.astype(np.int64), class_names=tuple(str(n) for n in names), test_mask=test)

    def images(self) -> np.ndarray:
        """float32 (N, D) vectors, memory-mapped."""
        self.check()
        if self.path.suffix == ".npy":
            vectors = self._npy(self.path, what="path", mmap=True)
            self._check_shape(vectors)
            if vectors.dtype == np.float32:
                return vectors
            return cached_array(self.cache_dir, f"features-{fingerprint(self.path)}", lambda: np.asarray(vectors, dtype=np.float32))
        extra = f"{self.params.labels}|{self.params.feature_column}|{self.params.split_column}"
        return cached_array(self.cache_dir, f"features-{fingerprint(self.path, extra=extra)}", self._parquet_vectors)

    def _parquet_vectors(self) -> np.ndarray:
        frame = self._frame()
        p = self.params
        if p.feature_column:
            if p.feature_column not in frame.columns:
                raise DataError(f"features: {self.path} has no column {p.feature_column!r}", key_path="dataset.feature_column")
            try:
                vectors = np.stack(frame[p.feature_column].to_numpy()).astype(np.float32)
            except (ValueError, TypeError) as exc:
                raise DataError(f"features: column {p.feature_column!r} does not hold vectors of one length: {exc}", key_path="dataset.feature_column") from None
        else:
            skip = {p.labels or "label", p.split_column}
            numeric = [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])]
            if not numeric:
                raise DataError(f"features: {self.path} has no numeric feature columns; name a vector column with dataset.feature_column", key_path="dataset.feature_column")
            vectors = frame[numeric].to_numpy(np.float32)
        self._check_shape(vectors)
        return vectors

    def _check_shape(self, vectors: np.ndarray) -> None:
        n = len(self.label_set().labels)
        if vectors.ndim != 2 or len(vectors) != n:
            raise DataError(f"features: vectors of shape {vectors.shape} do not match {n} labels (want (N, D))", key_path="dataset.path")
        if not np.isfinite(np.asarray(vectors[: min(n, 100_000)])).all():
            raise DataError(f"features: {self.path} holds NaN or infinite values", key_path="dataset.path")
