"""The gallery: a Faiss index over L2-normalised vectors with stable int64 item ids, plus metadata.

Backends: `flat` (exact), `ivf` (IVF-Flat), `ivfpq` (IVF-PQ), `hnsw`. A session adds only
its new items, so an update costs what its new items cost; coarse quantisers are trained
once, on the first vectors added (or a seeded sample of them). Under backfill policy
`none` a stored vector never changes; `replace` is the only way a stored vector changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from cvstream.errors import UserError

FORMAT_VERSION = 1
INDEX_FILE, META_FILE, INFO_FILE = "gallery.faiss", "gallery.parquet", "gallery.json"


class _Column:
    """An array that grows by doubling along its first axis."""

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
        """A writable view of the filled part."""
        return self._data[: self.size]


def _default_spec():
    from cvstream.scenario import GallerySpec

    return GallerySpec()


def gpu_available() -> bool:
    """Faiss was built with GPU support and sees a CUDA device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class Gallery:
    """Faiss index + per-item metadata + running per-class sums of the stored vectors."""

    # Every attribute is an array, a number, a string, a Faiss index or a _Column, so that a
    # checkpoint can save it field by field.
    def __init__(self, dim: int, spec=None, *, seed: int = 0):
        spec = spec if spec is not None else _default_spec()
        self.dim = dim
        self._spec_json = spec.model_dump_json()
        self.index_type = spec.index
        self.seed = seed
        _check_spec(dim, spec)
        self.index = _build_index(dim, spec)
        self.trained_session = -1  # the session whose vectors trained the coarse quantiser (-1: not yet, or none needed)
        self.trained_vectors = 0
        self.gpu = bool(spec.gpu and gpu_available() and spec.index != "hnsw")
        self.gpu_error = ""
        self.rebuilds = 0  # hnsw: graph rebuilds forced by replaced vectors
        self._sample_ids = _Column(np.int64)
        self._class_ids = _Column(np.int64)
        self._session_added = _Column(np.int64)
        self._generation = _Column(np.int64)
        self._backfilled_at = _Column(np.int64, fill=-1)
        self._transformed_at = _Column(np.int64, fill=-1)
        # Running per-class sums of the stored vectors, for class means without a pass over the gallery.
        self._class_sum = np.zeros((0, dim), dtype=np.float64)
        self._class_count = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self._sample_ids.size

    # -- growing --------------------------------------------------------------------------

    def require_trainable(self, n_first: int) -> None:
        """Raise a UserError now if the first session's `n_first` vectors cannot train this index."""
        spec = self.spec
        if spec.index not in ("ivf", "ivfpq"):
            return
        n = min(n_first, spec.train_size) if spec.train_size else n_first
        if n < spec.nlist:
            raise UserError(
                f"gallery: index {spec.index} with nlist = {spec.nlist} needs at least {spec.nlist} vectors to train its "
                f"coarse quantiser, but the first session adds {n_first} items{' (train_size ' + str(spec.train_size) + ')' if spec.train_size else ''}; "
                f"lower gallery.nlist or use index: flat"
            )
        if spec.index == "ivfpq" and n < 2**spec.pq_bits:
            raise UserError(
                f"gallery: ivfpq with pq_bits = {spec.pq_bits} needs at least {2 ** spec.pq_bits} training vectors, "
                f"but the first session adds {n_first}; lower gallery.pq_bits"
            )

    def add(self, vectors: np.ndarray, *, sample_ids: np.ndarray, class_ids: np.ndarray, session: int, generation: int) -> np.ndarray:
        vectors = self._as_vectors(vectors)
        n = len(vectors)
        if not self.index.is_trained and n:
            self._train(vectors, session=session)
        item_ids = np.arange(len(self), len(self) + n, dtype=np.int64)
        if n and isinstance(self.index, faiss.IndexIVF):
            self.index.add(vectors)  # the array direct map numbers them ntotal, ntotal + 1, ...: the item ids
        elif n:
            self.index.add_with_ids(vectors, item_ids)
        self._sample_ids.extend(np.asarray(sample_ids, dtype=np.int64))
        self._class_ids.extend(np.asarray(class_ids, dtype=np.int64))
        self._session_added.extend(np.full(n, session, dtype=np.int64))
        self._generation.extend(np.full(n, generation, dtype=np.int64))
        self._backfilled_at.extend(np.full(n, -1, dtype=np.int64))
        self._transformed_at.extend(np.full(n, -1, dtype=np.int64))
        stored = self.vectors(item_ids) if self.lossy else vectors
        self._accumulate(np.asarray(class_ids, dtype=np.int64), stored.astype(np.float64), sign=1)
        return item_ids

    def replace(
        self, item_ids: np.ndarray, vectors: np.ndarray, *, session: int, generation: int | None = None, transformed: bool = False
    ) -> None:
        """Store new vectors for existing items: re-embedded by `generation`, or mapped by a transform."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        vectors = self._as_vectors(vectors)
        if len(item_ids) != len(vectors):
            raise ValueError("one vector per item id")
        if len(item_ids) == 0:
            return
        if len(np.unique(item_ids)) != len(item_ids) or item_ids.min() < 0 or item_ids.max() >= len(self):
            raise ValueError("item ids must be distinct ids of this gallery")
        classes = self._class_ids.values[item_ids]
        self._accumulate(classes, self.vectors(item_ids).astype(np.float64), sign=-1)
        kind = self.index_type
        if kind == "flat":
            # Item id == position in the flat storage (ids are appended in order and never removed): write in place.
            self._flat_storage()[item_ids] = vectors
        elif kind in ("ivf", "ivfpq"):
            self.index.update_vectors(item_ids, vectors)
        else:
            # HNSW cannot unlink a node: rebuild the graph over the stored vectors (cost grows with the gallery).
            stored = self.vectors(np.arange(len(self), dtype=np.int64))
            stored[item_ids] = vectors
            self.index = _build_index(self.dim, self.spec)
            self.index.add_with_ids(stored, np.arange(len(self), dtype=np.int64))
            self.rebuilds += 1
        stored = self.vectors(item_ids) if self.lossy else vectors
        self._accumulate(classes, stored.astype(np.float64), sign=1)
        if generation is not None:
            self._generation.values[item_ids] = generation
            self._backfilled_at.values[item_ids] = session
            self._transformed_at.values[item_ids] = -1  # the stored vector is a true embedding again
        if transformed:
            self._transformed_at.values[item_ids] = session

    @property
    def spec(self):
        from cvstream.scenario import GallerySpec

        return GallerySpec.model_validate_json(self._spec_json)

    @property
    def lossy(self) -> bool:
        """Whether the index stores an approximation (PQ codes) of what was added."""
        return self.index_type == "ivfpq"

    def _as_vectors(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        return vectors

    def _train(self, vectors: np.ndarray, *, session: int) -> None:
        n_first = len(vectors)
        self.require_trainable(n_first)
        sample = vectors
        if self.spec.train_size and self.spec.train_size < n_first:
            rng = np.random.default_rng([self.seed, session, 0x1D3])  # a private generator for the training sample
            sample = vectors[np.sort(rng.choice(n_first, self.spec.train_size, replace=False))]
        self.index.train(sample)
        self.trained_session, self.trained_vectors = session, int(len(sample))

    def _flat_storage(self) -> np.ndarray:
        inner = faiss.downcast_index(self.index.index)
        return faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * self.dim).reshape(inner.ntotal, self.dim)

    def _accumulate(self, class_ids: np.ndarray, vectors: np.ndarray, *, sign: int) -> None:
        top = int(class_ids.max()) + 1 if len(class_ids) else 0
        if top > len(self._class_count):
            self._class_sum = np.vstack([self._class_sum, np.zeros((top - len(self._class_count), self.dim))])
            self._class_count = np.concatenate([self._class_count, np.zeros(top - len(self._class_count), np.int64)])
        if len(class_ids) == 0:
            return
        # One bincount over (class, dimension) cells of the classes present: np.add.at on rows is ~50x slower.
        classes, inverse = np.unique(class_ids, return_inverse=True)
        cells = (inverse[:, None] * self.dim + np.arange(self.dim)).ravel()
        sums = np.bincount(cells, weights=vectors.ravel(), minlength=len(classes) * self.dim).reshape(len(classes), self.dim)
        self._class_sum[classes] += sign * sums
        self._class_count[classes] += sign * np.bincount(inverse, minlength=len(classes))

    def _gpu_search(self, queries: np.ndarray, k: int):
        """Search a GPU copy of the index, made for this call (one transfer of the gallery, no state kept)."""
        try:
            resources = faiss.StandardGpuResources()
            flat = self.index_type == "flat"
            # The flat copy has no id map: its positions are the item ids.
            replica = faiss.index_cpu_to_gpu(resources, 0, faiss.downcast_index(self.index.index) if flat else self.index)
            return replica.search(queries, k)
        except RuntimeError as exc:  # e.g. a PQ layout the GPU kernels do not support: stay on the CPU
            self.gpu, self.gpu_error = False, str(exc)
            return self.index.search(queries, k)

    # -- reading --------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product search: (scores, item ids), -1 where fewer than k items were found."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, max(len(self), 1))
        if len(self) == 0:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        return self._gpu_search(queries, k) if self.gpu else self.index.search(queries, k)

    def vectors(self, item_ids: np.ndarray) -> np.ndarray:
        """The stored vectors of these items, exactly as indexed (decoded, for ivfpq)."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        if len(item_ids) == 0:
            return np.empty((0, self.dim), np.float32)
        if self.index_type == "flat":
            return self._flat_storage()[item_ids].copy()
        return np.ascontiguousarray(self.index.reconstruct_batch(item_ids), dtype=np.float32)

    def class_of(self, item_ids: np.ndarray) -> np.ndarray:
        item_ids = np.asarray(item_ids)
        classes = self._class_ids.values
        out = np.full(item_ids.shape, -1, dtype=np.int64)
        valid = item_ids >= 0
        out[valid] = classes[item_ids[valid]]
        return out

    def sample_ids_of(self, item_ids: np.ndarray) -> np.ndarray:
        return self._sample_ids.values[np.asarray(item_ids, dtype=np.int64)].copy()

    def generations(self) -> np.ndarray:
        """The generation that embedded each item (item id order), a copy."""
        return self._generation.values.copy()

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
        def optional(column: _Column):
            out = pd.array(column.values, dtype="Int64")
            out[column.values < 0] = pd.NA
            return out

        return pd.DataFrame(
            {
                "item_id": np.arange(len(self), dtype=np.int64),
                "sample_id": self._sample_ids.values.copy(),
                "class_id": self._class_ids.values.copy(),
                "session_added": self._session_added.values.copy(),
                "generation": self._generation.values.copy(),
                "backfilled_at": optional(self._backfilled_at),
                "transformed_at": optional(self._transformed_at),
            }
        )

    def describe(self) -> dict:
        """The index choice as recorded next to the index: type, parameters, how it was trained."""
        return {
            "format_version": FORMAT_VERSION, "dim": self.dim, "index": self.index_type, "spec": json.loads(self._spec_json),
            "trained": {"session": self.trained_session, "vectors": self.trained_vectors} if self.trained_session >= 0 else None,
            "gpu": self.gpu, "gpu_error": self.gpu_error, "items": len(self), "seed": self.seed, "hnsw_rebuilds": self.rebuilds,
        }

    # -- persistence ----------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Write gallery.faiss, gallery.json and gallery.parquet (each atomically) into `folder`."""
        from cvstream.simulator.outputs import atomic_write_bytes, write_json, write_parquet

        folder = Path(folder)
        atomic_write_bytes(folder / INDEX_FILE, faiss.serialize_index(self.index).tobytes())
        write_json(folder / INFO_FILE, self.describe())
        write_parquet(folder / META_FILE, self.metadata())

    @classmethod
    def load(cls, folder: str | Path) -> "Gallery":
        """Read a gallery saved by `save`; a mismatch between its files is a UserError."""
        from cvstream.scenario import GallerySpec

        folder = Path(folder)
        paths = {name: folder / name for name in (INDEX_FILE, META_FILE, INFO_FILE)}
        missing = [name for name, path in paths.items() if not path.is_file()]
        if missing:
            raise UserError(f"{folder}: no saved gallery ({', '.join(missing)} missing)")
        try:
            info = json.loads(paths[INFO_FILE].read_text())
            meta = pd.read_parquet(paths[META_FILE])
            index = faiss.deserialize_index(np.fromfile(paths[INDEX_FILE], dtype=np.uint8))
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"{folder}: the saved gallery cannot be read ({exc})") from None
        if info.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{paths[INFO_FILE]}: format {info.get('format_version')}, expected {FORMAT_VERSION}")
        gallery = cls(int(info["dim"]), GallerySpec(**info["spec"]), seed=int(info.get("seed", 0)))
        expected = np.arange(len(meta), dtype=np.int64)
        problems = []
        if index.d != gallery.dim:
            problems.append(f"{INDEX_FILE} holds {index.d}-d vectors, {INFO_FILE} says {gallery.dim}")
        if index.ntotal != len(meta):
            problems.append(f"{INDEX_FILE} holds {index.ntotal} vectors but {META_FILE} lists {len(meta)} items")
        if not np.array_equal(meta["item_id"].to_numpy(dtype=np.int64), expected):
            problems.append(f"{META_FILE}: item ids are not 0..{len(meta) - 1} in order")
        if int(info.get("items", len(meta))) != len(meta):
            problems.append(f"{INFO_FILE} says {info.get('items')} items, {META_FILE} lists {len(meta)}")
        if not problems and len(meta):
            ids = faiss.vector_to_array(index.id_map) if hasattr(index, "id_map") else None
            if ids is not None and not np.array_equal(np.sort(ids), expected):
                problems.append(f"the ids in {INDEX_FILE} do not match the item ids of {META_FILE}")
        if problems:
            raise UserError(f"{folder}: the saved gallery does not match its metadata: " + "; ".join(problems))
        if isinstance(index, faiss.IndexIVF) and index.direct_map.type != faiss.DirectMap.Array:
            index.set_direct_map_type(faiss.DirectMap.Array)
        gallery.index = index
        trained = info.get("trained") or {}
        gallery.trained_session, gallery.trained_vectors = int(trained.get("session", -1)), int(trained.get("vectors", 0))
        gallery.rebuilds = int(info.get("hnsw_rebuilds", 0))

        def ints(column: str) -> np.ndarray:
            return meta[column].astype("Int64").fillna(-1).to_numpy(dtype=np.int64)

        gallery._sample_ids.extend(ints("sample_id"))
        gallery._class_ids.extend(ints("class_id"))
        gallery._session_added.extend(ints("session_added"))
        gallery._generation.extend(ints("generation"))
        gallery._backfilled_at.extend(ints("backfilled_at"))
        gallery._transformed_at.extend(ints("transformed_at") if "transformed_at" in meta else np.full(len(meta), -1, np.int64))
        if len(meta):
            gallery._accumulate(ints("class_id"), gallery.vectors(expected).astype(np.float64), sign=1)
        return gallery


def _check_spec(dim: int, spec) -> None:
    if spec.index == "ivfpq" and dim % spec.pq_m:
        raise UserError(f"gallery: pq_m = {spec.pq_m} must divide model.embedding_dim = {dim}")


def _build_index(dim: int, spec) -> faiss.Index:
    ip = faiss.METRIC_INNER_PRODUCT
    if spec.index == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if spec.index == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, spec.hnsw_m, ip)
        hnsw.hnsw.efConstruction = spec.ef_construction
        hnsw.hnsw.efSearch = spec.ef_search
        return faiss.IndexIDMap2(hnsw)
    quantizer = faiss.IndexFlatIP(dim)
    if spec.index == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, spec.nlist, ip)
    elif spec.index == "ivfpq":
        index = faiss.IndexIVFPQ(quantizer, dim, spec.nlist, spec.pq_m, spec.pq_bits, ip)
    else:
        raise ValueError(f"unsupported index {spec.index!r}")
    index.cp.spherical = True  # unit vectors: centroids on the sphere suit inner-product search
    index.nprobe = min(spec.nprobe, spec.nlist)
    # Item ids are 0..n-1 in the order added, so the id -> list position map is an array: appending to it
    # costs the same at any gallery size (a hash table's inserts slow down as it grows), and
    # update_vectors replaces an item's vector in place.
    index.set_direct_map_type(faiss.DirectMap.Array)
    return index
