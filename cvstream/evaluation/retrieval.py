"""Retrieval: nearest classes over stored gallery items plus items not stored yet, and queries by their home session."""

from __future__ import annotations

import numpy as np

from cvstream.gallery.index import merge_top_k


def top_classes(queries: np.ndarray, k: int, *, gallery=None, vectors: np.ndarray | None = None, classes: np.ndarray | None = None,
                block: int = 4096) -> np.ndarray:
    """Classes of each query's k nearest items among a gallery's stored vectors and extra `vectors` (with their
    `classes`: items not stored yet), merged by inner product; -1 where there are fewer than k items.

    The one way cvstream answers "stored items plus fresh ones" (validation, anytime points) and plain
    arrays (the probe matrix). The extra vectors are searched exactly, ties to the lower index; the two
    are merged as the gallery merges its segments (`merge_top_k`), a tie going to the stored item.
    """
    n = len(queries)
    found = []  # (scores, classes) per source, best first
    if vectors is not None and len(vectors):
        vectors = np.asarray(vectors, dtype=np.float32)  # once, not per block
        m = min(k, len(vectors))
        extra_scores, extra = np.empty((n, m), np.float32), np.empty((n, m), np.int64)
        for start in range(0, n, block):
            sims = queries[start : start + block].astype(np.float32) @ vectors.T
            top = np.argsort(-sims, axis=1, kind="stable")[:, :m] if m > 1 else np.argmax(sims, axis=1)[:, None]
            extra[start : start + block] = top
            extra_scores[start : start + block] = np.take_along_axis(sims, top, axis=1)
        found.append((extra_scores, np.asarray(classes, dtype=np.int64)[extra]))
    if gallery is not None and len(gallery):
        stored_scores, items = gallery.search(queries, k)
        found.append((stored_scores, gallery.class_of(items)))  # last: it wins a tie
    if not found:
        return np.full((n, k), -1, dtype=np.int64)
    return merge_top_k(found, k)[1]


def home_subsets(home: np.ndarray, session: int, *, ahead: bool = False, per_home: bool = False) -> dict[str, np.ndarray]:
    """Masks of queries by their class's home session against `session` (SPEC section 6): `old` (earlier), `new` (the
    same), `all`; with `ahead`, classes whose home is later (the timeline's items that arrived before a generation
    trained on them); with `per_home`, `home:<g>` for every home up to `session` (forgetting's groups)."""
    home = np.asarray(home)
    subsets = {"old": home < session, "new": home == session}
    if ahead:
        subsets["ahead"] = home > session
    subsets["all"] = np.ones(len(home), dtype=bool)
    if per_home:
        for g in np.unique(home[home <= session]):
            subsets[f"home:{int(g)}"] = home == g
    return subsets
