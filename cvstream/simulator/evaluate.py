"""Evaluation of one session: search the gallery, score every query, aggregate per subset."""

from __future__ import annotations

import numpy as np

from cvstream.simulator.metrics import average_precision_at_r, recall_at_k


def evaluate_queries(
    vectors: np.ndarray,
    query_classes: np.ndarray,
    gallery,
    *,
    subsets: dict[str, np.ndarray],
    recall_at: list[int],
    map_at_r: bool,
) -> list[dict]:
    """Metric rows (`subset`, `metric`, `value`, `n_queries`) for each non-empty subset."""
    if len(vectors) == 0 or len(gallery) == 0:
        return []
    relevant = gallery.class_counts(query_classes)
    k = max(max(recall_at), int(relevant.max()) if map_at_r else 0)
    _, item_ids = gallery.search(vectors, k)
    neighbor_classes = gallery.class_of(item_ids)
    per_query = {f"recall@{k_}": recall_at_k(neighbor_classes, query_classes, k_) for k_ in recall_at}
    if map_at_r:
        per_query["map@r"] = average_precision_at_r(neighbor_classes, query_classes, relevant)
    rows = []
    for subset, mask in subsets.items():
        n = int(mask.sum())
        if n == 0:
            continue
        for metric, values in per_query.items():
            chosen = values[mask]
            chosen = chosen[~np.isnan(chosen)]
            rows.append({"subset": subset, "metric": metric, "value": float(chosen.mean()) if len(chosen) else float("nan"), "n_queries": n})
    return rows
