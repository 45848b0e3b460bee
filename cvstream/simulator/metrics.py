"""Retrieval metrics as pure functions of arrays (SPEC section 6).

`neighbor_classes[i]` holds the class of query i's nearest gallery items, best first
(-1 where the gallery had fewer items than asked for).
"""

from __future__ import annotations

import numpy as np


def recall_at_k(neighbor_classes: np.ndarray, query_classes: np.ndarray, k: int) -> np.ndarray:
    """Per query: 1.0 if any of the k nearest items has the query's class, else 0.0."""
    hits = neighbor_classes[:, :k] == query_classes[:, None]
    return hits.any(axis=1).astype(np.float64)


def average_precision_at_r(neighbor_classes: np.ndarray, query_classes: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Per query: AP@R = (1/R) sum_{i<=R} P(i) rel(i), R = the number of gallery items of its class.

    NaN for a query whose class has no gallery item. `neighbor_classes` must hold at least
    max(R) columns (fewer only where the gallery itself is smaller).
    """
    n, k = neighbor_classes.shape
    rel = neighbor_classes == query_classes[:, None]
    ranks = np.arange(1, k + 1)
    within = ranks[None, :] <= relevant[:, None]
    rel = rel & within
    precision = np.cumsum(rel, axis=1) / ranks[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision * rel).sum(axis=1) / relevant
    return np.where(relevant > 0, ap, np.nan)


def negative_flips(previous_correct: np.ndarray, current_correct: np.ndarray) -> np.ndarray:
    """Per query: 1.0 if it was right before and is wrong now."""
    return (previous_correct.astype(bool) & ~current_correct.astype(bool)).astype(np.float64)


def mean_over_sessions(values_by_session: list[float]) -> float:
    """AR@K: the mean over sessions of each session's R@K on all seen queries."""
    return float(np.mean(values_by_session)) if len(values_by_session) else float("nan")
