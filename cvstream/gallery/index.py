"""The gallery: Faiss index segments over L2-normalised vectors with stable int64 item ids, plus metadata.

Index types (`INDEX_TYPES`, a registry: a factory of an empty segment per name): `flat`
(exact), `ivf` (IVF-Flat), `ivfpq` (IVF-PQ), `hnsw`. The items live in
segments of at most `segment_size` items, each a run of consecutive item ids: item id `i` is
position `i % segment_size` of segment `i // segment_size` (until a model upgrade closes a
segment early, below), so ids are stable and need no id map. A session appends only
its new items to the newest segment, so an update costs what its new items cost: no list,
graph or array whose size is the gallery's is ever grown, copied or searched while adding.
A search visits every segment and merges their top k. The IVF segments share one coarse
quantiser, trained once on the first vectors added (or a seeded sample of them). Under
backfill policy `none` a stored vector never changes; `replace` is the only way one does.
The gallery takes its index choice as plain values (`IndexSpec`, or anything with its fields).

Mixed dimensions (a model upgrade, SPEC section 12): `widen(dim)` makes later vectors wider.
Segments already written keep their dimension (the newest is closed, the next add opens one
of the new dimension, with its own coarse quantiser); nothing is stored again. A query
searches a narrower segment with its first components (`narrow_queries`: `normalize`, the
default, rescales them to unit length, a cosine in the older space; `pad` keeps them as they
are, as zero-padding the stored vectors would), and a narrower query is zero-padded. Every
search of the gallery, whole or of some of its items (`search(items=...)`), goes through that
one matching and one merge of the segments' top k. `vectors()` and the class means come back
zero-padded to `dim`, and a `replace` into a narrower segment stores that segment again at the
current dimension, its other items zero-padded (from then on compared as wider items; an
approximate index re-encodes them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from cvstream.errors import UserError
from cvstream.registry import Registry

_BLOCK = 4096  # rows per block of the running class sums


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


@dataclass(frozen=True)
class IndexSpec:
    """The index choice and its parameters (the scenario's `gallery` section has these fields, with their ranges)."""

    index: str = "flat"
    nlist: int = 64
    nprobe: int = 8
    pq_m: int = 16
    pq_bits: int = 8
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 64
    train_size: int | None = None
    segment_size: int = 131_072
    gpu: bool = True
    narrow_queries: str = "normalize"  # or "pad" (SPEC section 12): see the scenario's GallerySpec

    @classmethod
    def of(cls, spec) -> "IndexSpec":
        """An IndexSpec from any object with its fields (the scenario's GallerySpec); None: the defaults."""
        return cls() if spec is None else cls(**{f.name: getattr(spec, f.name) for f in fields(cls)})


# Index types: (dim, IndexSpec) -> an empty inner-product Faiss index, one segment (or, for an index that
# trains, the untrained template whose training every segment shares). `gpu`: whether it may go to the GPU.
INDEX_TYPES: Registry = Registry("gallery index", attributes={"gpu": True})
_SHARED_IVF = (faiss.IndexIVFFlat, faiss.IndexIVFPQ)  # segments share the template's quantiser (and PQ codebooks)
_EXACT = (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexHNSWFlat)  # store exactly what was added


def gpu_available() -> bool:
    """Faiss was built with GPU support and sees a CUDA device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class Gallery:
    """Faiss index segments + per-item metadata + running per-class sums of the stored vectors."""

    # Caches, rebuilt on demand: the segments' GPU copies, and which files were last written where.
    _gpu = None
    _saved = None

    def __init__(self, dim: int, spec=None, *, seed: int = 0):
        spec = IndexSpec.of(spec)
        if spec.index not in INDEX_TYPES:
            raise UserError(f"gallery.index: {INDEX_TYPES.unknown_message(spec.index)}")
        self.dim = dim
        self._spec = spec
        self.index_type = spec.index
        self.segment_size = spec.segment_size
        self.seed = seed
        self._factory = INDEX_TYPES.get(spec.index)
        # Per dimension, an empty index; for ivf and ivfpq, the trained coarse quantiser every segment of it shares.
        self._templates: dict[int, faiss.Index] = {dim: self._factory(dim, spec)}
        self._trains = not self._template.is_trained  # trained once, on the first vectors added
        self.segments: list[faiss.Index] = []
        self._starts = np.zeros(0, dtype=np.int64)  # per segment, its first item id
        self._versions = np.zeros(0, dtype=np.int64)  # per segment, bumped at every change (what a cached copy is checked against)
        # Per segment, its version after its last change that was not an append: a save may write the items added
        # since a version at least this as a delta; anything older than it is stored again whole.
        self._rewritten = np.zeros(0, dtype=np.int64)
        self._changes = 0  # bumped at every add and replace (what a saved metadata table is checked against)
        # (change number, item ids whose metadata it set) since the oldest save `_saved` keeps: what a save's new part holds
        self._metadata_log: list[tuple[int, np.ndarray]] = []
        self._log_floor = 0  # changes up to this number have left the log
        self.trained_session = -1  # the session whose vectors trained the coarse quantiser (-1: not yet, or none needed)
        self.trained_vectors = 0
        self._narrower_training: dict[int, dict | None] = {}  # earlier, narrower dimensions: how their index was trained
        self.gpu = bool(spec.gpu and gpu_available() and self._factory.gpu)
        self.gpu_error = ""
        self.rebuilds = 0  # segments rebuilt (hnsw graphs, indexes that cannot replace a vector in place)
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

    def require_trainable(self, n_first: int, *, session: int = 0) -> None:
        """Raise a UserError now if the `n_first` vectors of the first session to store this dimension (`session`: 0, or
        that of a model upgrade) cannot train this index."""
        spec, template = self.spec, self._template
        if not self._trains:
            return
        adds = "the first session adds" if session == 0 else f"session {session} (the model upgrade to {self.dim} dimensions) adds"
        n = min(n_first, spec.train_size) if spec.train_size else n_first
        if isinstance(template, faiss.IndexIVF) and n < template.nlist:
            raise UserError(
                f"gallery: index {spec.index} with nlist = {spec.nlist} needs at least {spec.nlist} vectors to train its "
                f"coarse quantiser, but {adds} {n_first} items{' (train_size ' + str(spec.train_size) + ')' if spec.train_size else ''}; "
                f"lower gallery.nlist or use index: flat"
            )
        if isinstance(template, faiss.IndexIVFPQ) and n < 2**spec.pq_bits:
            raise UserError(
                f"gallery: ivfpq with pq_bits = {spec.pq_bits} needs at least {2 ** spec.pq_bits} training vectors, "
                f"but {adds} {n_first}; lower gallery.pq_bits"
            )

    def widen(self, dim: int) -> None:
        """Store `dim`-d vectors from now on (a model upgrade); the segments already written keep their dimension."""
        if dim < self.dim:
            raise ValueError(f"the gallery stores {self.dim}-d vectors; it cannot narrow to {dim}")
        if dim == self.dim:
            return
        self._narrower_training[self.dim] = self._training()
        self._templates.setdefault(dim, self._factory(dim, self.spec))
        self._class_sum = np.pad(self._class_sum, ((0, 0), (0, dim - self.dim)))
        self.dim, self.trained_session, self.trained_vectors = dim, -1, 0

    def add(self, vectors: np.ndarray, *, sample_ids: np.ndarray, class_ids: np.ndarray, session: int, generation: int) -> np.ndarray:
        vectors = self._as_vectors(vectors)
        n = len(vectors)
        if not self._template.is_trained and n:
            self._train(vectors, session=session)
        item_ids = np.arange(len(self), len(self) + n, dtype=np.int64)
        self._changes += 1
        self._metadata_log.append((self._changes, item_ids))
        start = 0
        while start < n:  # fill the newest segment, then open the next
            if not self.segments or self.segments[-1].ntotal >= self.segment_size or self.segments[-1].d != self.dim:
                self.segments.append(self._empty_segment())
                self._versions = np.append(self._versions, 0)
                self._rewritten = np.append(self._rewritten, 0)
                self._starts = np.append(self._starts, len(self) + start)
            chunk = vectors[start : start + self.segment_size - self.segments[-1].ntotal]
            self.segments[-1].add(chunk)  # positions ntotal, ntotal + 1, ...: the item ids, less the segment's offset
            self._versions[-1] += 1
            start += len(chunk)
        self._sample_ids.extend(np.asarray(sample_ids, dtype=np.int64))
        self._class_ids.extend(np.asarray(class_ids, dtype=np.int64))
        self._session_added.extend(np.full(n, session, dtype=np.int64))
        self._generation.extend(np.full(n, generation, dtype=np.int64))
        self._backfilled_at.extend(np.full(n, -1, dtype=np.int64))
        self._transformed_at.extend(np.full(n, -1, dtype=np.int64))
        stored = self.vectors(item_ids) if self.lossy else vectors
        self._accumulate(np.asarray(class_ids, dtype=np.int64), stored, sign=1)
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
        self._changes += 1
        self._accumulate(classes, self.vectors(item_ids), sign=-1)
        for number, rows, local in self._by_segment(item_ids):
            segment = self.segments[number]
            if segment.d < self.dim:
                self._store_wider(number, local, vectors[rows], session=session)
            elif isinstance(segment, faiss.IndexFlat):
                _stored(segment, self.dim)[local] = vectors[rows]  # in place
            elif isinstance(segment, faiss.IndexIVF):
                segment.update_vectors(local, vectors[rows])
            else:
                # HNSW cannot unlink a node (nor can most other indexes): rebuild this segment (at most segment_size items).
                stored = self._segment_vectors(segment)
                stored[local] = vectors[rows]
                segment = self._empty_segment()
                segment.add(stored)
                self.segments[number] = segment
                self.rebuilds += 1
            self._versions[number] += 1
            self._rewritten[number] = self._versions[number]
        stored = self.vectors(item_ids) if self.lossy else vectors
        self._accumulate(classes, stored, sign=1)
        if generation is not None or transformed:
            self._metadata_log.append((self._changes, item_ids.copy()))
        if generation is not None:
            self._generation.values[item_ids] = generation
            self._backfilled_at.values[item_ids] = session
            self._transformed_at.values[item_ids] = -1  # the stored vector is a true embedding again
        if transformed:
            self._transformed_at.values[item_ids] = session

    def _store_wider(self, number: int, local: np.ndarray, vectors: np.ndarray, *, session: int) -> None:
        """Store a narrower segment again at the current dimension: `vectors` at positions `local`, the other items'
        stored vectors zero-padded (the same scores); at most `segment_size` items, as an hnsw rebuild."""
        segment = self.segments[number]
        items = np.arange(self._starts[number], self._starts[number] + segment.ntotal, dtype=np.int64)
        others = np.setdiff1d(items, items[local])
        if self.lossy:  # re-encoded at the new dimension, the others' decoded vectors change: so do their class sums
            self._accumulate(self._class_ids.values[others], self.vectors(others), sign=-1)
        stored = self.vectors(items)
        stored[local] = vectors
        if not self._template.is_trained:
            self._train(stored, session=session)
        wider = self._empty_segment()
        wider.add(stored)
        self.segments[number] = wider
        self.rebuilds += 1
        if self.lossy:
            self._accumulate(self._class_ids.values[others], self.vectors(others), sign=1)

    @property
    def _template(self) -> faiss.Index:
        """The empty index (for ivf and ivfpq, the trained coarse quantiser) of the current dimension's segments."""
        return self._templates[self.dim]

    @property
    def spec(self) -> IndexSpec:
        return self._spec

    @property
    def lossy(self) -> bool:
        """Whether the index stores an approximation (PQ codes, say) of what was added."""
        return not isinstance(self._template, _EXACT)

    @property
    def quantizer(self) -> faiss.Index | None:
        """ivf, ivfpq: the coarse quantiser all segments share (None for flat and hnsw)."""
        return self._template.quantizer if isinstance(self._template, faiss.IndexIVF) else None

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
        try:
            self._template.train(sample)
        except RuntimeError as exc:  # a registered index type Faiss cannot train on these vectors
            raise UserError(f"gallery: index {self.index_type} cannot be trained on {len(sample)} vectors ({exc})") from None
        self.trained_session, self.trained_vectors = session, int(len(sample))

    def _training(self) -> dict | None:
        """How the current dimension's index was trained, as gallery.json records it (None: not yet, or no training)."""
        return {"session": self.trained_session, "vectors": self.trained_vectors} if self.trained_session >= 0 else None

    def _empty_segment(self, taking_over: faiss.Index | None = None, *, dim: int | None = None) -> faiss.Index:
        """A new, empty segment of `dim` (default the current dimension); for ivf and ivfpq, sharing that dimension's
        trained quantiser (and copying the PQ codebooks).

        `taking_over`, a deserialised IVF segment with its own copy of the quantiser, hands its
        inverted lists to the new segment, so that a loaded gallery shares one quantiser again.
        Any other index type's segment is a fresh index, or a copy of the trained template.
        """
        dim = self.dim if dim is None else dim
        template, ip = self._templates[dim], faiss.METRIC_INNER_PRODUCT
        if not isinstance(template, _SHARED_IVF):
            if not self._trains:
                return self._factory(dim, self.spec)
            segment = faiss.clone_index(template)
            if isinstance(segment, faiss.IndexIVF):
                segment.set_direct_map_type(faiss.DirectMap.Array)  # for update_vectors
            return segment
        if isinstance(template, faiss.IndexIVFFlat):
            segment = faiss.IndexIVFFlat(template.quantizer, dim, template.nlist, ip)
        else:
            segment = faiss.IndexIVFPQ(template.quantizer, dim, template.nlist, template.pq.M, template.pq.nbits, ip)
            segment.pq = template.pq  # a copy of the trained codebooks
        segment.is_trained = True
        segment.nprobe = template.nprobe
        if taking_over is not None:
            segment.replace_invlists(taking_over.invlists, True)
            taking_over.own_invlists = False
            segment.ntotal = taking_over.ntotal
        # Positions are 0..n-1 in the order added, so the position -> list entry map is an array:
        # appending to it costs the same at any size, and update_vectors replaces a vector in place.
        segment.set_direct_map_type(faiss.DirectMap.Array)
        return segment

    def _by_segment(self, item_ids: np.ndarray):
        """(segment number, rows of `item_ids` in it, positions in the segment), per segment they touch."""
        if len(self.segments) == 1:
            yield 0, slice(None), item_ids
            return
        number = np.searchsorted(self._starts, item_ids, side="right") - 1
        order = np.argsort(number, kind="stable")
        present, starts = np.unique(number[order], return_index=True)
        for seg, begin, end in zip(present, starts, [*starts[1:], len(order)]):
            rows = order[begin:end]
            yield int(seg), rows, item_ids[rows] - self._starts[seg]

    def _accumulate(self, class_ids: np.ndarray, vectors: np.ndarray, *, sign: int) -> None:
        """Add (sign 1) or remove (sign -1) vectors in the per-class sums, summed in float64."""
        top = int(class_ids.max()) + 1 if len(class_ids) else 0
        if top > len(self._class_count):
            self._class_sum = np.vstack([self._class_sum, np.zeros((top - len(self._class_count), self.dim))])
            self._class_count = np.concatenate([self._class_count, np.zeros(top - len(self._class_count), np.int64)])
        # Blocks of rows sorted by class and summed per run of one class: a few small temporaries
        # (no gallery-sized or float64 copy of the batch, whose fresh pages cost more than the sums).
        for start in range(0, len(class_ids), _BLOCK):
            block = class_ids[start : start + _BLOCK]
            order = np.argsort(block, kind="stable")
            ordered = block[order]
            runs = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
            sums = np.add.reduceat(vectors[start : start + _BLOCK][order], runs, axis=0, dtype=np.float64)
            classes = ordered[runs]
            self._class_sum[classes] += sign * sums
            self._class_count[classes] += sign * np.diff(np.r_[runs, len(block)])

    # -- searching ------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, *, items: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product search: (scores, item ids) best first, -1 where fewer than k items were found; `items`: among
        these item ids only, exactly over their stored vectors. Each segment gets the queries as `match_queries`
        makes them for its dimension (SPEC section 12), and the segments' top k are merged by score."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        searched = len(self) if items is None else len(items)
        k = min(k, max(searched, 1))
        if searched == 0:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        views = {d: match_queries(queries, d, self._spec.narrow_queries) for d in {int(s.d) for s in self.segments}}
        if items is not None:
            return self._search_items(views, k, np.asarray(items, dtype=np.int64))
        coarse = {}
        if len(self.segments) > 1 and isinstance(self._template, faiss.IndexIVF) and not self.gpu:
            # One coarse assignment for all segments of a dimension: they share its quantiser (GPU copies assign on the GPU).
            coarse = {d: self._templates[d].quantizer.search(view, self._templates[d].nprobe) for d, view in views.items()}
        best = None
        for number, segment in enumerate(self.segments):  # one segment's results at a time: memory of two searches
            scores, ids = self._search_segment(number, segment, views[segment.d], k, coarse.get(segment.d))
            if number:  # positions -> item ids; the first segment's are its item ids already
                ids = np.where(ids >= 0, ids + self._starts[number], -1)
            best = (scores, ids) if best is None else merge_top_k([best, (scores, ids)], k)
        return best

    def _search_items(self, views: dict[int, np.ndarray], k: int, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact search among `items`: per segment they touch, its stored vectors of them (at most a segment's)."""
        found = []
        for number, rows, local in self._by_segment(items):
            segment = self.segments[number]
            scores, at = faiss.knn(views[segment.d], _read(segment, local), min(k, len(local)), metric=faiss.METRIC_INNER_PRODUCT)
            found.append((scores, items[rows][at]))
        return merge_top_k(found, k)

    def _search_segment(self, number: int, segment: faiss.Index, queries: np.ndarray, k: int, coarse) -> tuple[np.ndarray, np.ndarray]:
        if self.gpu:
            try:
                return self._gpu_copy(number, segment).search(queries, k)
            except RuntimeError as exc:  # e.g. a PQ layout the GPU kernels do not support: stay on the CPU
                self.gpu, self.gpu_error, self._gpu = False, str(exc), None
        if coarse is not None:
            return segment.search_preassigned(queries, k, coarse[1], coarse[0])
        return segment.search(queries, k)

    def _gpu_copy(self, number: int, segment: faiss.Index):
        """The GPU copy of a segment: made once, and again only after the segment changed."""
        if self._gpu is None:
            self._gpu = {"resources": faiss.StandardGpuResources(), "copies": {}}
        copies, version = self._gpu["copies"], int(self._versions[number])
        if copies.get(number, (None,))[0] != version:
            copies[number] = (version, faiss.index_cpu_to_gpu(self._gpu["resources"], 0, segment))
        return copies[number][1]

    # -- reading --------------------------------------------------------------------------

    def vectors(self, item_ids: np.ndarray) -> np.ndarray:
        """The stored vectors of these items, exactly as indexed (decoded, for ivfpq), zero-padded to `dim` where a
        model upgrade left them in a narrower segment."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        narrower = any(segment.d != self.dim for segment in self.segments)
        out = (np.zeros if narrower else np.empty)((len(item_ids), self.dim), np.float32)
        if len(item_ids) == 0:
            return out
        for number, rows, local in self._by_segment(item_ids):
            segment = self.segments[number]
            out[rows, : segment.d] = _read(segment, local)
        return out

    def _segment_vectors(self, segment: faiss.Index) -> np.ndarray:
        """A copy of all of one segment's stored vectors (of the segment's own dimension)."""
        if _flat_storage(segment) is not None:
            return _stored(segment, segment.d).copy()
        return _reconstructed(segment, segment.ntotal)

    def exact_copy(self) -> "Gallery":
        """A flat copy (the same items, metadata, segment dimensions and `narrow_queries`), searched exactly: for what-if
        changes, such as the backfill curve's, that leave this gallery untouched."""
        copy = Gallery(self.dim, IndexSpec(**{**asdict(self._spec), "index": "flat"}), seed=self.seed)
        segments = []
        for segment in self.segments:
            segments.append(faiss.IndexFlatIP(int(segment.d)))
            segments[-1].add(self._segment_vectors(segment))
        copy._adopt(segments)
        for column in ("_sample_ids", "_class_ids", "_session_added", "_generation", "_backfilled_at", "_transformed_at"):
            getattr(copy, column).extend(getattr(self, column).values)
        copy._class_sum, copy._class_count = self.class_sums()
        return copy

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
        """Mean of the stored vectors of each class, zero-padded to `dim` (float32), and whether the class has any item."""
        counts = self.class_counts(class_ids)
        means = np.zeros((len(class_ids), self.dim), dtype=np.float32)
        has = counts > 0
        idx = np.asarray(class_ids)[has]
        means[has] = (self._class_sum[idx] / counts[has, None]).astype(np.float32)
        return means, has

    def metadata(self, item_ids: np.ndarray | None = None) -> pd.DataFrame:
        """One row per item (all, or those of `item_ids`, in that order)."""
        ids = np.arange(len(self), dtype=np.int64) if item_ids is None else np.asarray(item_ids, dtype=np.int64)

        def optional(column: _Column):
            values = column.values[ids]
            out = pd.array(values, dtype="Int64")
            out[values < 0] = pd.NA
            return out

        return pd.DataFrame(
            {
                "item_id": ids.copy(),
                "sample_id": self._sample_ids.values[ids],
                "class_id": self._class_ids.values[ids],
                "session_added": self._session_added.values[ids],
                "generation": self._generation.values[ids],
                "backfilled_at": optional(self._backfilled_at),
                "transformed_at": optional(self._transformed_at),
            }
        )

    # -- persistence: cvstream.gallery.store (which imports this module) ---------------------

    def describe(self) -> dict:
        """The index choice as gallery.json records it: type, parameters, how it was trained, its segments."""
        from cvstream.gallery.store import describe

        return describe(self)

    def save(self, folder: str | Path) -> None:
        """Write the gallery into `folder` (`cvstream.gallery.store.save`: only what changed since its last save)."""
        from cvstream.gallery.store import save

        save(self, folder)

    @classmethod
    def load(cls, folder: str | Path, *, class_sums: tuple[np.ndarray, np.ndarray] | None = None) -> "Gallery":
        """Read a gallery saved by `save` (`cvstream.gallery.store.load`); `class_sums`: those saved with it."""
        from cvstream.gallery.store import load

        return load(folder, class_sums=class_sums)

    def _adopt(self, segments: list[faiss.Index]) -> None:
        """Take deserialised segments as this gallery's (after a load or a checkpoint restore)."""
        firsts = {}  # dimension -> its first segment
        for segment in segments:
            firsts.setdefault(int(segment.d), segment)
        if isinstance(self._template, _SHARED_IVF):
            # Per dimension, a template trained with its first segment's centroids (and codebooks) holds the shared
            # quantiser; every segment hands its inverted lists to a segment built around it.
            for dim, first in firsts.items():
                template = self._templates[dim] = self._factory(dim, self.spec)
                template.quantizer.add(_reconstructed(first.quantizer, first.nlist))
                if isinstance(template, faiss.IndexIVFPQ):
                    template.pq = first.pq
                template.is_trained = True
            segments = [self._empty_segment(taking_over=segment, dim=int(segment.d)) for segment in segments]
        elif self._trains:  # any other trained index: a dimension's template is its first segment, emptied
            for dim, first in firsts.items():
                self._templates[dim] = faiss.clone_index(first)
                self._templates[dim].reset()
        self.segments = segments
        self._starts = np.cumsum([0] + [int(s.ntotal) for s in segments[:-1]]).astype(np.int64) if segments else np.zeros(0, np.int64)
        self._versions = np.zeros(len(segments), dtype=np.int64)
        self._rewritten = np.zeros(len(segments), dtype=np.int64)
        self._gpu = self._saved = None

    def class_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """The running per-class sums and counts (copies), as a checkpoint keeps them."""
        return self._class_sum.copy(), self._class_count.copy()


def _flat_storage(segment: faiss.Index) -> faiss.IndexFlat | None:
    """The flat index that holds a flat or HNSW-Flat segment's vectors; None for any other index."""
    if isinstance(segment, faiss.IndexHNSW):
        segment = faiss.downcast_index(segment.storage)
    return segment if isinstance(segment, faiss.IndexFlat) else None


def _stored(segment: faiss.Index, dim: int) -> np.ndarray:
    """The float vectors of a flat or HNSW-Flat segment, in place (writable)."""
    flat = _flat_storage(segment)
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * dim).reshape(flat.ntotal, dim)


def _reconstructed(index: faiss.Index, n: int) -> np.ndarray:
    """The first `n` stored vectors, into a numpy array we own (faiss.contrib.torch_utils, once anything imports
    it, makes the argument-less form return torch tensors)."""
    out = np.empty((n, index.d), dtype=np.float32)
    index.reconstruct_n(0, n, out)
    return out


def _read(segment: faiss.Index, positions: np.ndarray) -> np.ndarray:
    """The stored vectors at these positions of one segment, of its own dimension (decoded, for ivfpq)."""
    if _flat_storage(segment) is not None:
        return _stored(segment, segment.d)[positions]
    return np.asarray(segment.reconstruct_batch(positions))


def first_components(queries: np.ndarray, dim: int) -> np.ndarray:
    """Queries as `dim`-d vectors compare with them (SPEC section 12): their first `dim` components, or zero-padded to
    `dim`. An inner product with the first components is one with the vectors zero-padded to the queries' width."""
    if queries.shape[1] == dim:
        return queries
    if queries.shape[1] > dim:
        return np.ascontiguousarray(queries[:, :dim])
    return np.pad(queries, ((0, 0), (0, dim - queries.shape[1])))


def match_queries(queries: np.ndarray, dim: int, narrow_queries: str) -> np.ndarray:
    """Queries as they search `dim`-d stored vectors (SPEC section 12): `first_components`, and with `normalize` a wider
    query's first components rescaled to unit length (a cosine in the older space)."""
    view = first_components(queries, dim)
    if narrow_queries == "normalize" and dim < queries.shape[1]:
        view = view / np.maximum(np.linalg.norm(view, axis=1, keepdims=True), 1e-12)
    return view


def merge_top_k(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k of several sorted (scores, ids) results for the same queries, k columns (-1: no item); on a tie
    the later result's entry comes first."""
    def widen(a: np.ndarray, fill) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, k - a.shape[1])), constant_values=fill) if a.shape[1] < k else a[:, :k]

    scores, ids = [widen(s, -np.inf) for s, _ in results], [widen(i, -1) for _, i in results]
    if len(results) == 1:
        return scores[0], ids[0]
    return faiss.merge_knn_results(np.stack(scores), np.stack(ids), keep_max=True)


# -- index types ----------------------------------------------------------------------------


@INDEX_TYPES.register("flat")
def flat(dim: int, spec: IndexSpec) -> faiss.Index:
    return faiss.IndexFlatIP(dim)


@INDEX_TYPES.register("hnsw", gpu=False)
def hnsw(dim: int, spec: IndexSpec) -> faiss.Index:
    index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = spec.ef_construction
    index.hnsw.efSearch = spec.ef_search
    return index


@INDEX_TYPES.register("ivf")
def ivf(dim: int, spec: IndexSpec) -> faiss.Index:
    return _coarse(faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, spec.nlist, faiss.METRIC_INNER_PRODUCT), spec)


@INDEX_TYPES.register("ivfpq")
def ivfpq(dim: int, spec: IndexSpec) -> faiss.Index:
    if dim % spec.pq_m:
        raise UserError(f"gallery: pq_m = {spec.pq_m} must divide model.embedding_dim = {dim}")
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, spec.nlist, spec.pq_m, spec.pq_bits, faiss.METRIC_INNER_PRODUCT)
    return _coarse(index, spec)


def _coarse(index: faiss.IndexIVF, spec: IndexSpec) -> faiss.IndexIVF:
    index.cp.spherical = True  # unit vectors: centroids on the sphere suit inner-product search
    index.nprobe = min(spec.nprobe, spec.nlist)
    return index
