"""Compatibility across generations: a fixed probe set embedded by every generation.

The engine holds only the current and the previous model, so the probe's gallery
vectors of every generation are kept instead (probe items x dim x generations, small).
`C[i][j]` is the R@1 of generation-i probe queries against the probe gallery as
generation j embedded it; probe gallery and probe queries never change during a run.
Across a model upgrade (SPEC section 12) generation i's queries are wider than generation
j's vectors and are compared through their first d_j components, as the gallery compares
them with its narrower segments: the same rule gives the BCT criterion, AC / BC / FC and the
update gain across generations of different sizes.
"""

from __future__ import annotations

import numpy as np

from cvstream.evaluation.metrics import bct_criterion, compatibility_scores, recall_at_k
from cvstream.evaluation.retrieval import top_classes
from cvstream.evaluation.rows import MetricRow
from cvstream.gallery.index import first_components
from cvstream.sessions.rng import numpy_rng


def sample_probe(stream, *, items: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(probe gallery sample ids, probe query sample ids): up to `items` of each, drawn once from the whole stream."""
    rng = numpy_rng(seed, "probe")
    gallery = np.unique(np.concatenate([s.gallery_ids for s in stream] or [np.empty(0, np.int64)]))
    queries = np.unique(np.concatenate([s.query_ids for s in stream] or [np.empty(0, np.int64)]))
    pick = lambda ids: np.sort(rng.permutation(ids)[: min(items, len(ids))]).astype(np.int64)  # noqa: E731
    return pick(gallery), pick(queries)


class ProbeSet:
    """The probe set of one run and the probe gallery vectors of every generation so far."""

    def __init__(self, *, gallery_ids: np.ndarray, query_ids: np.ndarray, labels: np.ndarray):
        self.gallery_ids = gallery_ids
        self.query_ids = query_ids
        self.gallery_classes = labels[gallery_ids].astype(np.int64)
        self.query_classes = labels[query_ids].astype(np.int64)
        self.gallery_vectors: dict[int, np.ndarray] = {}  # generation -> probe gallery as it embedded it
        self.matrix: dict[tuple[int, int], float] = {}  # (query generation, gallery generation) -> R@1

    def __len__(self) -> int:
        return len(self.gallery_ids)

    @property
    def generations(self) -> list[int]:
        return sorted(self.gallery_vectors)

    def add_generation(self, generation: int, *, gallery_vectors: np.ndarray, query_vectors: np.ndarray) -> dict[int, float]:
        """Store a new generation's probe gallery and fill its row `C[generation][j]` for every j so far."""
        self.gallery_vectors[generation] = np.ascontiguousarray(gallery_vectors, dtype=np.float32)
        row = {}
        for j in self.generations:
            gallery = self.gallery_vectors[j]
            queries = first_components(np.ascontiguousarray(query_vectors, dtype=np.float32), gallery.shape[1])
            nearest = top_classes(queries, 1, vectors=gallery, classes=self.gallery_classes)
            row[j] = float(recall_at_k(nearest, self.query_classes, 1).mean())
            self.matrix[(generation, j)] = row[j]
        return row

    def dense(self) -> tuple[list[int], np.ndarray]:
        """(generations, C) with C[a, b] for the a-th and b-th generation, NaN where not measured."""
        gens = self.generations
        out = np.full((len(gens), len(gens)), np.nan)
        for a, i in enumerate(gens):
            for b, j in enumerate(gens):
                out[a, b] = self.matrix.get((i, j), np.nan)
        return gens, out

    def rows(self, *, session: int, generation: int) -> list[MetricRow]:
        """Metric rows of a newly deployed generation: its C row, the BCT criterion, and AC / BC / FC so far."""
        def row(gallery_view: str, metric: str, value: float) -> MetricRow:
            return MetricRow(session=session, query_generation=generation, gallery_view=gallery_view, subset="all", metric=metric,
                             value=value, n_queries=len(self.query_ids))

        out = [row(f"gen:{j}", "recall@1", self.matrix[(generation, j)]) for j in self.generations if (generation, j) in self.matrix]
        gens, dense = self.dense()
        if len(gens) >= 2 and gens[-1] == generation:
            out.append(row(f"gen:{gens[-2]}", "bct_criterion", bct_criterion(dense, len(gens) - 1, len(gens) - 2)))
            out += [row("probe", name, value) for name, value in compatibility_scores(dense).items()]
        return out

    def state(self) -> dict[str, np.ndarray]:
        gens = self.generations
        keys = sorted(self.matrix)
        dims = [self.gallery_vectors[g].shape[1] for g in gens]
        widest = max(dims, default=0)  # generations of different sizes: zero-padded to the widest, each with its own size
        return {
            "probe_generations": np.asarray(gens, dtype=np.int64),
            "probe_dims": np.asarray(dims, dtype=np.int64),
            "probe_vectors": np.stack([np.pad(self.gallery_vectors[g], ((0, 0), (0, widest - d))) for g, d in zip(gens, dims)])
            if gens else np.empty((0, len(self), 0), np.float32),
            "probe_matrix_keys": np.asarray(keys, dtype=np.int64).reshape(-1, 2),
            "probe_matrix_values": np.asarray([self.matrix[k] for k in keys], dtype=np.float64),
        }

    def restore(self, state: dict[str, np.ndarray]) -> None:
        vectors = state["probe_vectors"]
        dims = state.get("probe_dims", np.full(len(vectors), vectors.shape[-1] if vectors.ndim == 3 else 0))
        self.gallery_vectors = {int(g): np.ascontiguousarray(v[:, :d]) for g, v, d in zip(state["probe_generations"], vectors, dims)}
        self.matrix = {(int(i), int(j)): float(v) for (i, j), v in zip(state["probe_matrix_keys"], state["probe_matrix_values"])}
