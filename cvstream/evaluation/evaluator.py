"""Evaluation: search the gallery, score every query, aggregate per subset into metric rows, and keep what later
sessions need (last session's answers for negative flips, per-group history for forgetting, the probe set for
compatibility, every anytime R@1 for A_auc)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np

from cvstream.errors import UserError
from cvstream.evaluation.compat import ProbeSet, sample_probe
from cvstream.evaluation.metrics import (
    METRICS,
    area_under_curve,
    calibration,
    neighbors_needed_by,
    forgetting,
    mean_over_sessions,
    negative_flips,
    recall_at_k,
)
from cvstream.evaluation.retrieval import home_subsets, top_classes
from cvstream.evaluation.rows import MetricRow
from cvstream.models.trainer import embed


# Rows x neighbours that one search returns at most (a single query asks for its own need even beyond it):
# the ids, scores, classes and the metrics' temporaries are a few arrays of this size.
NEIGHBOR_BUDGET = 1 << 21


def neighbors_per_query(query_classes: np.ndarray, gallery, *, recall_at: list[int], map_at_r: bool, metrics=()) -> np.ndarray:
    """How many neighbours each query needs: the largest K, its own class's R for mAP@R (and metrics that read R),
    and the counts registered metrics declare."""
    names = [*(["map@r"] if map_at_r else []), *metrics]
    relevant = gallery.class_counts(query_classes)
    fixed = max(neighbors_needed_by(names, relevant[:0]), max(recall_at))  # without R: the declared counts only
    needed = np.full(len(query_classes), fixed, dtype=np.int64)
    if any(METRICS.get(name).neighbors == "relevant" for name in names):
        np.maximum(needed, relevant, out=needed)
    return needed


def query_blocks(needed: np.ndarray, budget: int) -> list[np.ndarray]:
    """Queries in blocks, each searched with its own largest need k: the queries sorted by need, cut so that
    rows x k stays within `budget` (a query whose need alone exceeds it is a block of one)."""
    order = np.argsort(needed, kind="stable")
    ranked = needed[order]
    blocks, start, n = [], 0, len(order)
    while start < n:
        end = min(n, start + max(1, budget // max(int(ranked[start]), 1)))
        while end - start > 1 and (end - start) * int(ranked[end - 1]) > budget:
            end = start + max(1, budget // int(ranked[end - 1]))
        blocks.append(order[start:end])
        start = end
    return blocks


def _answers_depend_on_k(gallery) -> bool:
    """HNSW widens its search list to k (efSearch = max(ef_search, k)): its first answers change with k."""
    return any(isinstance(segment, faiss.IndexHNSW) for segment in getattr(gallery, "segments", ()))


def score_queries(
    vectors: np.ndarray, query_classes: np.ndarray, gallery, *, recall_at: list[int], map_at_r: bool, metrics=(),
    neighbor_budget: int = NEIGHBOR_BUDGET,
) -> dict[str, np.ndarray]:
    """Per-query values of every metric (`recall@k`, `map@r`, the registered `metrics`) against a gallery.

    Searched in blocks of queries (`query_blocks`), so memory stays bounded however large the classes: the
    same values as one search with the largest need for all (a query's first answers do not depend on how
    many more are asked for, up to exact ties; on HNSW every block keeps that largest k, so they are the same).
    """
    needed = np.minimum(neighbors_per_query(query_classes, gallery, recall_at=recall_at, map_at_r=map_at_r, metrics=metrics),
                        max(len(gallery), 1))
    if len(needed) and _answers_depend_on_k(gallery):
        needed[:] = needed.max()
    per_query: dict[str, np.ndarray] = {}
    for rows in query_blocks(needed, neighbor_budget) or [np.arange(0)]:
        _, item_ids = gallery.search(vectors[rows], int(needed[rows].max(initial=1)))
        block = score_neighbors(item_ids, query_classes[rows], gallery, recall_at=recall_at, map_at_r=map_at_r, metrics=metrics)
        for name, values in block.items():
            per_query.setdefault(name, np.empty(len(needed), dtype=values.dtype))[rows] = values
    return per_query


def score_neighbors(
    item_ids: np.ndarray, query_classes: np.ndarray, gallery, *, recall_at: list[int], map_at_r: bool, metrics: list[str] | tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Per-query metric values from the item ids a search returned, best first: recall@K, map@r, and the
    registered `metrics` (evaluation.metrics) by name."""
    relevant = gallery.class_counts(query_classes)
    neighbor_classes = gallery.class_of(item_ids)
    per_query = {f"recall@{k_}": recall_at_k(neighbor_classes, query_classes, k_) for k_ in recall_at}
    for name in (["map@r"] if map_at_r else []) + list(metrics):
        values = np.asarray(METRICS.get(name)(neighbor_classes, query_classes, relevant), dtype=np.float64)
        if values.shape != (len(query_classes),):
            raise UserError(f"metric {name!r} gave values of shape {values.shape}, not one per query ({len(query_classes)})")
        per_query[name] = values
    return per_query


def subset_means(per_query: dict[str, np.ndarray], subsets: dict[str, np.ndarray]) -> list[tuple[str, str, float, int]]:
    """(subset, metric, mean, n_queries) for each non-empty subset and metric: the mean over the subset's queries that
    have a value (a query whose class has no gallery item has no AP@R), and how many those are."""
    means = []
    for subset, mask in subsets.items():
        if not mask.any():
            continue
        for metric, values in per_query.items():
            chosen = values[mask]
            chosen = chosen[~np.isnan(chosen)]
            means.append((subset, metric, float(chosen.mean()) if len(chosen) else float("nan"), len(chosen)))
    return means


def aggregate(
    per_query: dict[str, np.ndarray], subsets: dict[str, np.ndarray], *, session: int, query_generation: int, gallery_view: str
) -> list[MetricRow]:
    """Metric rows of per-query values: their mean over each non-empty subset (`subset_means`)."""
    return [
        MetricRow(session=session, query_generation=query_generation, gallery_view=gallery_view, subset=subset, metric=metric,
                  value=value, n_queries=n)
        for subset, metric, value, n in subset_means(per_query, subsets)
    ]


def calibration_per_query(vectors: np.ndarray, query_classes: np.ndarray, gallery, *, generation: int) -> dict[str, np.ndarray]:
    """Per query, `calibration` against a gallery holding vectors of more than one generation ({} otherwise), its
    pairs scored by the gallery's own search as the mixed search scores them; `vectors` are `generation`'s."""
    generations = gallery.generations()
    if len(np.unique(generations)) < 2:
        return {}
    classes = gallery.class_of(np.arange(len(gallery), dtype=np.int64))
    older, current = np.flatnonzero(generations < generation), np.flatnonzero(generations == generation)
    older = older[np.argsort(classes[older], kind="stable")]  # by class: a class's older items are one run
    old_classes, current_classes = classes[older], np.sort(classes[current])
    asked = np.flatnonzero(np.isin(query_classes, old_classes)) if len(current) else np.empty(0, np.int64)
    out = {name: np.full(len(query_classes), np.nan) for name in ("calibration_old_positive", "calibration_new_negative_top")}
    # Negatives: each query's search of the current generation's items, deep enough to pass its own class's.
    mine = query_classes[asked]
    needed = np.minimum(1 + np.searchsorted(current_classes, mine, "right") - np.searchsorted(current_classes, mine), len(current))
    negative_scores = np.full((len(asked), int(needed.max(initial=1))), -np.inf, np.float32)
    negative_classes = np.full(negative_scores.shape, -1, np.int64)
    for rows in query_blocks(needed, NEIGHBOR_BUDGET):
        scores, found = gallery.search(vectors[asked[rows]], int(needed[rows].max()), items=current)
        negative_scores[rows, : scores.shape[1]], negative_classes[rows, : found.shape[1]] = scores, gallery.class_of(found)
    for c in np.unique(mine):  # positives: the queries of a class against its older items, every pair
        rows = np.flatnonzero(mine == c)
        pairs = older[np.searchsorted(old_classes, c) : np.searchsorted(old_classes, c, "right")]
        positive, _ = gallery.search(vectors[asked[rows]], len(pairs), items=pairs)
        for name, values in calibration(positive, negative_scores[rows], negative_classes[rows], mine[rows]).items():
            out[name][asked[rows]] = values
    return out


def evaluate_queries(vectors, query_classes, gallery, *, subsets, recall_at, map_at_r) -> list[dict]:
    """`subset`, `metric`, `value`, `n_queries` for each non-empty subset (`subset_means`) of a search of `vectors`; none
    when there are no queries or no gallery (the backfill curve's measurement at each fraction)."""
    if len(vectors) == 0 or len(gallery) == 0:
        return []
    per_query = score_queries(vectors, query_classes, gallery, recall_at=recall_at, map_at_r=map_at_r)
    means = subset_means(per_query, subsets)
    return [{"subset": subset, "metric": metric, "value": value, "n_queries": n} for subset, metric, value, n in means]


@dataclass(frozen=True)
class Probed:
    """The probe set as a newly deployed generation embedded it (what probe-<g>.npz saves), and what that cost."""

    arrays: dict[str, np.ndarray]
    backbone_forwards: int
    seconds: float


@dataclass(frozen=True)
class AnytimePoint:
    """One anytime evaluation of the model in training: its rows, and what it cost (billed to the session's evaluation)."""

    rows: list[MetricRow]
    backbone_forwards: int
    seconds: float
    value: float  # R@1 (all): the run's anytime curve, whose area the evaluation reports


@dataclass
class Evaluated:
    """One session's evaluation: its rows, its cost (the probe's and the anytime points' included), and exactly the
    vectors it searched."""

    rows: list[MetricRow]
    backbone_forwards: int = 0
    seconds: float = 0.0
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class Evaluator:
    """Everything measured after a session, and the little state it carries from one session to the next."""

    def __init__(self, *, scenario, stream, labels: np.ndarray):
        self.spec = scenario.evaluation
        self.batch_size = scenario.training.eval_batch_size
        self.amp = scenario.training.amp
        self.keep_arrays = scenario.output.save_embeddings
        self.stream = stream
        self.labels = labels
        probe_gallery, probe_queries = sample_probe(stream, items=self.spec.probe_items, seed=scenario.seed)
        self.probe = ProbeSet(gallery_ids=probe_gallery, query_ids=probe_queries, labels=labels) if self.spec.probe_items else None
        self.previous_answers: tuple[np.ndarray, np.ndarray] | None = None  # (query sample ids, correct at R@1)
        self.previous_session: int | None = None  # the session those queries are of (a checkpoint keeps just it and the bits)
        self.group_best: dict[int, float] = {}  # home session -> best R@1 of its queries so far: what forgetting reads
        self.recall_history: dict[int, list[float]] = {}  # k -> R@k of all seen queries, per session
        self.anytime_values: list[float] = []  # every anytime R@1 (all) of the run so far

    # -- at deploy ----------------------------------------------------------------------

    def deploy(self, *, model, images, generation: int) -> Probed | None:
        """Embed the probe set by a newly deployed generation (None: no probe set, or the generation is not new)."""
        if self.probe is None or generation in self.probe.gallery_vectors or generation < 0:
            return None
        clock = time.perf_counter()
        gallery_vectors = embed(model, images, self.probe.gallery_ids, batch_size=self.batch_size, amp=self.amp)
        query_vectors = embed(model, images, self.probe.query_ids, batch_size=self.batch_size, amp=self.amp)
        self.probe.add_generation(generation, gallery_vectors=gallery_vectors, query_vectors=query_vectors)
        arrays = {
            "probe_gallery_vectors": gallery_vectors, "probe_gallery_sample_ids": self.probe.gallery_ids,
            "probe_gallery_class_ids": self.probe.gallery_classes, "probe_query_vectors": query_vectors,
            "probe_query_sample_ids": self.probe.query_ids, "probe_query_class_ids": self.probe.query_classes,
        }
        return Probed(arrays=arrays, backbone_forwards=len(self.probe.gallery_ids) + len(self.probe.query_ids),
                      seconds=time.perf_counter() - clock)

    # -- during training ----------------------------------------------------------------

    def anytime(self, *, session: int, step: int, model, images, gallery) -> AnytimePoint:
        """R@1 of the model in training as if it were deployed now: stored gallery plus this session's items by it."""
        clock = time.perf_counter()
        s = self.stream[session]
        training = model.training
        queries = embed(model, images, s.query_ids, batch_size=self.batch_size, amp=self.amp)
        fresh = embed(model, images, s.gallery_ids, batch_size=self.batch_size, amp=self.amp)
        model.train(training)
        nearest = top_classes(queries, 1, gallery=gallery, vectors=fresh, classes=self.labels[s.gallery_ids])
        query_classes = self.labels[s.query_ids]
        correct = recall_at_k(nearest, query_classes, 1)
        subsets = {k: v for k, v in self._subsets(session, query_classes).items() if not k.startswith("home:")}
        rows = aggregate({"recall@1": correct}, subsets, session=session, query_generation=session, gallery_view=f"anytime:{step}")
        return AnytimePoint(rows=rows, backbone_forwards=len(s.query_ids) + len(s.gallery_ids), seconds=time.perf_counter() - clock,
                            value=float(correct.mean()))

    # -- after a session ----------------------------------------------------------------

    def _subsets(self, session: int, query_classes: np.ndarray) -> dict[str, np.ndarray]:
        return home_subsets(self.stream.home_of(query_classes), session, per_home=True)

    def evaluate(
        self, *, session: int, model, images, gallery, generation: int, probed: Probed | None, anytime: Sequence[AnytimePoint]
    ) -> Evaluated:
        """Every metric of the session, with the rows of the generation's probe set (`probed`, from `deploy`) and of the
        anytime points measured during its training (from `anytime`), whose costs it bills."""
        clock = time.perf_counter()
        query_ids = self.stream[session].query_ids
        vectors = embed(model, images, query_ids, batch_size=self.batch_size, amp=self.amp)
        query_classes = self.labels[query_ids].astype(np.int64)
        subsets = self._subsets(session, query_classes)
        mixed = dict(session=session, query_generation=generation, gallery_view="mixed")
        rows: list[MetricRow] = []
        if len(query_ids) and len(gallery):
            recall_at = sorted(set(self.spec.recall_at) | {1})  # R@1 feeds forgetting and negative flips
            per_query = score_queries(
                vectors, query_classes, gallery, recall_at=recall_at, map_at_r=self.spec.map_at_r, metrics=self.spec.metrics
            )
            main = {name: mask for name, mask in subsets.items() if not name.startswith("home:")}
            rows += aggregate(per_query, main, **mixed)
            rows += self._history_rows(session, per_query, subsets, generation=generation)
            rows += self._flip_rows(session, query_ids, per_query["recall@1"], subsets, generation=generation)
            calibrated = calibration_per_query(vectors, query_classes, gallery, generation=generation)
            rows += [row for row in aggregate(calibrated, {"all": subsets["all"]}, **mixed) if row.n_queries]
        if probed is not None:
            rows += self.probe.rows(session=session, generation=generation)
        if anytime:
            self.anytime_values += [point.value for point in anytime]
            rows += [row for point in anytime for row in point.rows]
            rows.append(MetricRow(session=session, query_generation=generation, gallery_view="anytime", subset="all", metric="a_auc",
                                  value=area_under_curve(self.anytime_values), n_queries=len(query_ids)))
        arrays = {}
        if self.keep_arrays:
            items = np.arange(len(gallery), dtype=np.int64)
            arrays = {
                "query_vectors": vectors, "query_sample_ids": np.asarray(query_ids, np.int64), "query_class_ids": query_classes,
                "gallery_vectors": gallery.vectors(items) if len(items) else np.empty((0, vectors.shape[1]), np.float32),
                "gallery_item_ids": items, "gallery_class_ids": gallery.class_of(items),
            }
        measured = [*([probed] if probed is not None else []), *anytime]  # embedded for this evaluation, earlier in the session
        return Evaluated(rows=rows, backbone_forwards=len(query_ids) + sum(m.backbone_forwards for m in measured),
                         seconds=time.perf_counter() - clock + sum(m.seconds for m in measured), arrays=arrays)

    def _history_rows(
        self, session: int, per_query: dict[str, np.ndarray], subsets: dict[str, np.ndarray], *, generation: int
    ) -> list[MetricRow]:
        """AR@K over the sessions so far, and R@1 and forgetting per class group (home session), in the mixed gallery."""
        def row(subset: str, metric: str, value: float, n_queries: int) -> MetricRow:
            return MetricRow(session=session, query_generation=generation, gallery_view="mixed", subset=subset, metric=metric,
                             value=value, n_queries=n_queries)

        rows = []
        n_all = int(subsets["all"].sum())
        for name, values in per_query.items():
            if name.startswith("recall@"):
                k = int(name.split("@")[1])
                self.recall_history.setdefault(k, []).append(float(values.mean()))
                rows.append(row("all", f"ar@{k}", mean_over_sessions(self.recall_history[k]), n_all))
        old_forgetting = []
        for name, mask in subsets.items():
            if not name.startswith("home:"):
                continue
            group = int(name.split(":")[1])
            current = float(per_query["recall@1"][mask].mean())
            rows.append(row(name, "recall@1", current, int(mask.sum())))
            best = self.group_best.get(group)
            if group < session and best is not None:
                value = forgetting([best], current)
                old_forgetting.append(value)
                rows.append(row(name, "forgetting", value, int(mask.sum())))
            self.group_best[group] = current if best is None else max(best, current)
        if old_forgetting:
            rows.append(row("old", "forgetting", float(np.mean(old_forgetting)), int(subsets["old"].sum())))
        return rows

    def _flip_rows(
        self, session: int, query_ids: np.ndarray, correct: np.ndarray, subsets: dict[str, np.ndarray], *, generation: int
    ) -> list[MetricRow]:
        """Negative flip rate against the previous session, over the queries asked in both, in the mixed gallery."""
        previous = self.previous_answers
        self.previous_answers = (np.asarray(query_ids, np.int64), correct.astype(bool))
        self.previous_session = session
        if previous is None:
            return []
        before_ids, before_correct = previous
        asked_before = np.isin(query_ids, before_ids)
        lookup = dict(zip(before_ids.tolist(), before_correct.tolist()))
        was_correct = np.array([lookup.get(int(q), False) for q in query_ids], dtype=bool)
        flips = negative_flips(was_correct, correct)
        rows = []
        for name in ("old", "new", "all"):
            mask = subsets[name] & asked_before
            if mask.any():
                rows.append(MetricRow(session=session, query_generation=generation, gallery_view="mixed", subset=name,
                                      metric="negative_flip", value=float(flips[mask].mean()), n_queries=int(mask.sum())))
        return rows

    # -- resume ---------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON-able values) that let a resumed run measure exactly what the uninterrupted one would.

        The last answers are their session and one bit per query (the stream gives the queries again), and each
        class group keeps its best R@1: a few bytes per query and per group, not every id and every session's R@1.
        """
        arrays = self.probe.state() if self.probe is not None else {}
        values = {"group_best": {str(g): v for g, v in self.group_best.items()},
                  "recall_history": {str(k): v for k, v in self.recall_history.items()},
                  "anytime_values": self.anytime_values}
        if self.previous_answers is not None and self.previous_session is not None:
            arrays["previous_correct_bits"] = np.packbits(self.previous_answers[1])
            values["previous_session"] = self.previous_session
        elif self.previous_answers is not None:  # restored from an older checkpoint, not evaluated since
            arrays["previous_query_ids"], arrays["previous_correct"] = self.previous_answers
        return arrays, values

    def restore(self, arrays: dict[str, np.ndarray], values: dict) -> None:
        if self.probe is not None:
            self.probe.restore(arrays)
        if "previous_correct_bits" in arrays:
            self.previous_session = int(values["previous_session"])
            ids = np.asarray(self.stream[self.previous_session].query_ids, np.int64)
            self.previous_answers = (ids, np.unpackbits(arrays["previous_correct_bits"], count=len(ids)).astype(bool))
        elif "previous_query_ids" in arrays:  # a checkpoint of an older cvstream: the ids themselves
            self.previous_answers = (arrays["previous_query_ids"].astype(np.int64), arrays["previous_correct"].astype(bool))
        if "group_best" in values:
            self.group_best = {int(g): float(v) for g, v in values["group_best"].items()}
        else:  # an older checkpoint: every R@1 since the group's session
            self.group_best = {int(g): float(np.nanmax(v)) for g, v in values["group_history"].items() if len(v)}
        self.recall_history = {int(k): list(v) for k, v in values["recall_history"].items()}
        self.anytime_values = list(values["anytime_values"])

