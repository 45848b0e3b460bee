"""Nearest classes over stored gallery items plus items not stored yet: one function for every caller."""

from __future__ import annotations

import numpy as np


def top_classes(queries: np.ndarray, k: int, *, gallery=None, vectors: np.ndarray | None = None, classes: np.ndarray | None = None,
                block: int = 4096) -> np.ndarray:
    """Classes of each query's k nearest items among a gallery's stored vectors and extra `vectors` (with their
    `classes`: items not stored yet), merged by inner product; -1 where there are fewer than k items.

    The one way cvstream answers "stored items plus fresh ones" (validation, anytime points) and plain
    arrays (the probe matrix). The extra vectors are searched exactly, ties to the lower index; on a tie
    between a stored and an extra item the stored one comes first.
    """
    n = len(queries)
    scores, found = [], []
    if gallery is not None and len(gallery):
        stored_scores, items = gallery.search(queries, k)
        scores.append(stored_scores)
        found.append(np.where(items >= 0, gallery.class_of(np.maximum(items, 0)), -1))
    if vectors is not None and len(vectors):
        vectors = np.asarray(vectors, dtype=np.float32)  # once, not per block
        m = min(k, len(vectors))
        extra_scores, extra = np.empty((n, m), np.float32), np.empty((n, m), np.int64)
        for start in range(0, n, block):
            sims = queries[start : start + block].astype(np.float32) @ vectors.T
            top = np.argsort(-sims, axis=1, kind="stable")[:, :m] if m > 1 else np.argmax(sims, axis=1)[:, None]
            extra[start : start + block] = top
            extra_scores[start : start + block] = np.take_along_axis(sims, top, axis=1)
        scores.append(extra_scores)
        found.append(np.asarray(classes)[extra])
    if not found:
        return np.full((n, k), -1, dtype=np.int64)
    score, cls = np.concatenate(scores, axis=1), np.concatenate(found, axis=1).astype(np.int64)
    order = np.argsort(-np.where(cls < 0, -np.inf, score), axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(cls, order, axis=1)
    return np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=-1) if out.shape[1] < k else out
