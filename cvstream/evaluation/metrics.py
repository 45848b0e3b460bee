"""Retrieval metrics as pure functions of arrays (SPEC section 6).

`neighbor_classes[i]` holds the class of query i's nearest gallery items, best first
(-1 where the gallery had fewer items than asked for). A compatibility matrix `C` is a
(G, G) array, `C[i, j]` the R@1 of generation-i queries against a gallery embedded by
generation j, NaN where `i < j` or not measured.

`METRICS` holds the per-query metrics computed from the neighbours besides recall@K (which
`evaluation.recall_at` parametrises): each is `(neighbor_classes, query_classes, relevant)
-> one float64 per query` (NaN: not defined for that query; the mean skips it), `relevant`
being the number of gallery items of the query's class, and declares how many `neighbors`
it reads: a count, or "relevant" (R, as mAP@R). `evaluation.metrics` names the ones a run
computes (mAP@R has its own key, `evaluation.map_at_r`); their rows land in metrics.parquet
with recall@K's.
"""

from __future__ import annotations

import numpy as np

from cvstream.registry import Registry

METRICS: Registry = Registry("metric", attributes={"neighbors": "relevant"})


def recall_at_k(neighbor_classes: np.ndarray, query_classes: np.ndarray, k: int) -> np.ndarray:
    """Per query: 1.0 if any of the k nearest items has the query's class, else 0.0."""
    hits = neighbor_classes[:, :k] == query_classes[:, None]
    return hits.any(axis=1).astype(np.float64)


@METRICS.register("map@r", neighbors="relevant")
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
    # A running sum read at column R: the same float for any k >= R (a pairwise sum over k columns is not),
    # so evaluating in blocks of queries, each with its own k, gives exactly the values of one search.
    last = np.clip(relevant, 1, max(k, 1))[:, None] - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.take_along_axis(np.cumsum(precision * rel, axis=1), last, axis=1)[:, 0] / relevant if k else np.zeros(n)
    return np.where(relevant > 0, ap, np.nan)


def neighbors_needed_by(names: list[str] | tuple[str, ...], relevant: np.ndarray) -> int:
    """How many neighbours the metrics `names` read: the largest count they declare, and max(R) for "relevant"."""
    needed = [METRICS.get(name).neighbors for name in names]
    counts = [int(n) for n in needed if n != "relevant"]
    if "relevant" in needed and len(relevant):
        counts.append(int(np.max(relevant)))
    return max(counts, default=0)


def negative_flips(previous_correct: np.ndarray, current_correct: np.ndarray) -> np.ndarray:
    """Per query: 1.0 if it was right before and is wrong now."""
    return (previous_correct.astype(bool) & ~current_correct.astype(bool)).astype(np.float64)


def calibration(
    positive_scores: np.ndarray, negative_scores: np.ndarray, negative_classes: np.ndarray, query_classes: np.ndarray
) -> dict[str, np.ndarray]:
    """Per query of a mixed gallery (SPEC section 12): `calibration_old_positive`, the mean score of its new-to-old
    positive pairs (`positive_scores`, NaN where a row has fewer), and `calibration_new_negative_top`, the best score
    among current-generation items of another class (`negative_scores` best first, at least one column, their
    `negative_classes`, -1: no item). NaN in both where either is missing."""
    counted = ~np.isnan(positive_scores)
    positive = np.nansum(positive_scores, axis=1, dtype=np.float64) / np.maximum(counted.sum(axis=1), 1)
    other = (negative_classes != query_classes[:, None]) & (negative_classes >= 0)
    negative = np.take_along_axis(negative_scores, other.argmax(axis=1)[:, None], axis=1)[:, 0].astype(np.float64)
    both = counted.any(axis=1) & other.any(axis=1)
    return {"calibration_old_positive": np.where(both, positive, np.nan), "calibration_new_negative_top": np.where(both, negative, np.nan)}


def mean_over_sessions(values_by_session: list[float]) -> float:
    """AR@K: the mean over sessions of each session's R@K on all seen queries."""
    return float(np.mean(values_by_session)) if len(values_by_session) else float("nan")


def forgetting(earlier: list[float] | np.ndarray, current: float) -> float:
    """Best earlier value of a class group minus its current value; NaN without an earlier value."""
    earlier = np.asarray(earlier, dtype=np.float64)
    earlier = earlier[~np.isnan(earlier)]
    return float(earlier.max() - current) if len(earlier) else float("nan")


def bct_criterion(matrix: np.ndarray, new: int, old: int) -> float:
    """1.0 if new queries against the old gallery beat old against old (BCT's empirical criterion)."""
    return float(matrix[new, old] > matrix[old, old])


def compatibility_scores(matrix: np.ndarray) -> dict[str, float]:
    """AC (share of pairs i > j with C[i][j] >= C[j][j]), BC (mean over i < last of C[last][i] - C[i][i])
    and FC (mean over i >= 1 of C[i][i-1] - C[i][i]); NaN with a single generation."""
    g = len(matrix)
    if g < 2:
        return {"ac": float("nan"), "bc": float("nan"), "fc": float("nan")}
    diag = np.diag(matrix)
    pairs = [(i, j) for i in range(g) for j in range(i)]
    ac = np.mean([matrix[i, j] >= diag[j] for i, j in pairs])
    bc = np.mean([matrix[g - 1, i] - diag[i] for i in range(g - 1)])
    fc = np.mean([matrix[i, i - 1] - diag[i] for i in range(1, g)])
    return {"ac": float(ac), "bc": float(bc), "fc": float(fc)}


def update_gain(*, new_old: float, old_old: float, paragon: float) -> float:
    """BCT's update gain: (M(new, old) - M(old, old)) / (M(new*, new*) - M(old, old)); NaN if the paragon gains nothing."""
    denominator = paragon - old_old
    return float((new_old - old_old) / denominator) if denominator != 0 else float("nan")


def area_under_curve(values: list[float] | np.ndarray) -> float:
    """A_auc (i-Blurry): the normalised area under accuracy against samples seen, for equally spaced points."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if len(values) else float("nan")
