"""The service timeline (SPEC section 11): deploying, backfilling and serving on a simulated clock in hours.

The session engine answers "how good is generation g against the gallery as it stands after session t".
The timeline replays what the team running the search service lives through in time, as a discrete-event
simulation on SimPy, with four processes:

- *sessions*: at t x interval session t's data is complete and its training starts; the learning side
  trains it (`Simulator.run_session`, whose `SessionResult` carries the generation, or the generation an
  interrupted run saved), which takes the
  session's training images / (accelerators.train x throughput) of simulated time; the generation then
  deploys (`deploy: hot`) or becomes the backfill's target (`deploy: after-backfill`).
- *ingest*: session t's items arrive evenly over ((t-1) x interval, t x interval], in a seeded order, and
  are embedded on arrival by the generation serving then (`ingest: continuous`; items that arrive before
  any model exists wait for the first deploy), or by generation t when it deploys (`ingest: at-deploy`).
- *backfill*: one worker re-embeds stale items in the policy's order, chunk by chunk, at
  accelerators.backfill x throughput items per second; `transform` maps the stale items with psi first;
  a newer generation re-targets the worker at its next chunk boundary (items the older target
  re-embedded stay stale). With `deploy: after-backfill` the target starts serving the instant the
  last chunk completes.
- *evaluation*: every `eval_every_hours`, and right after every deploy and every completed backfill, the
  held-out queries of every class with an item in the gallery are answered against the gallery as it
  stands then, and against the same items all embedded by the serving generation (what a completed
  full backfill would give: the reference for the recovery time).

Every item is searchable from its arrival on: the gallery admits what has arrived before anything looks
at it or changes it. Only the generations still needed are kept alive: the serving one and the backfill's
target (a query cache of the previous one for `queries: dual`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import simpy
import torch

from cvstream.errors import UserError
from cvstream.evaluation.evaluator import neighbors_per_query, score_neighbors, score_queries
from cvstream.gallery import Gallery
from cvstream.gallery.backfill import BACKFILL_POLICIES, fit_transform, plan_backfill, stale_items, transform_pairs
from cvstream.gallery.index import IndexSpec, merge_top_k
from cvstream.models.flops import TRAIN_STEP_FORWARDS
from cvstream.sessions.rng import numpy_rng, torch_generator
from cvstream.simulator.generations import Generation, load_generation
from cvstream.timeline.throughput import Throughput, resolve_throughput

JOBS = ("train", "backfill", "serve", "ingest")
SUBSETS = ("old", "new", "ahead", "all")
TIMELINE_COLUMNS = [
    "time_hours", "kind", "session", "serving_generation", "target_generation", "backfilled_fraction", "backfilled_items",
    "gallery_items", "stale_items", "n_queries", *[f"r1_{s}" for s in SUBSETS], *[f"map_{s}" for s in SUBSETS],
    "r1_full", "map_full", *[f"accel_hours_{job}" for job in JOBS], "detail",
]
RECOVERY_TOLERANCE = 0.01  # SPEC: recovered when R@1 (all) is within 0.01 of the completed full backfill's


# -- the generations -------------------------------------------------------------------------------


class LearningSide:
    """Session t's generation: trained now by the session engine (its `SessionResult`), or read back where a resumed
    run already trained it."""

    def __init__(self, sim):
        if not sim.keeps_generations:
            raise UserError("the simulator keeps no generations: its scenario has no timeline section")
        self.sim = sim
        self.resumed_until = sim.state.next_session

    def train(self, t: int) -> Generation:
        if t < self.resumed_until:
            return load_generation(self.sim.run_dir, t, self.sim.device)
        result = self.sim.run_session(t)
        train = result.cost("train")
        return Generation(t, result.generation, result.model, int(train["items"]), int(train["backbone_forwards"]))


# -- item embeddings, once per generation -----------------------------------------------------------


class _Embeddings:
    """One generation's embeddings of samples, each computed once (arrivals, backfill and the reference share them)."""

    def __init__(self, embed, n_samples: int):
        self._embed = embed
        self._row = np.full(n_samples, -1, dtype=np.int64)
        self._data: np.ndarray | None = None
        self._size = 0
        self.forwards = 0

    def get(self, sample_ids: np.ndarray) -> np.ndarray:
        sample_ids = np.asarray(sample_ids, dtype=np.int64)
        missing = sample_ids[self._row[sample_ids] < 0]
        if len(missing):
            missing = missing[np.sort(np.unique(missing, return_index=True)[1])]  # first occurrence order
            vectors = self._embed(missing)
            self.forwards += len(missing)
            if self._data is None:
                self._data = np.empty((max(1024, 2 * len(missing)), vectors.shape[1]), np.float32)
            while self._size + len(missing) > len(self._data):
                self._data = np.concatenate([self._data, np.empty_like(self._data)])
            self._data[self._size : self._size + len(missing)] = vectors
            self._row[missing] = np.arange(self._size, self._size + len(missing))
            self._size += len(missing)
        return self._data[self._row[sample_ids]]


# -- the timeline -----------------------------------------------------------------------------------


@dataclass
class TimelineResult:
    frame: pd.DataFrame
    summary: dict
    gallery: Gallery | None = None  # the timeline's gallery at the horizon


class Timeline:
    """Replays the scenario's service on a simulated clock; `Timeline(sim).run()` inside `sim.running()`."""

    def __init__(self, sim):
        if sim.scenario.timeline is None:
            raise UserError("the scenario has no timeline section (add `timeline: {}` for every default)")
        self.sim = sim
        self.spec = sim.scenario.timeline
        self.scale = self.spec.item_scale
        self.scenario = sim.scenario
        self.learning = LearningSide(sim)
        self.env = simpy.Environment()
        self.targets = simpy.Store(self.env)  # generations the backfill worker should move the gallery to
        stream, interval = sim.stream, self.spec.session_interval_hours
        self.sessions = len(stream)
        self.horizon = self.spec.horizon_hours if self.spec.horizon_hours is not None else self.sessions * interval
        # Arrivals: every session's gallery items, in a seeded order within the session, at even times.
        ids, times, owner = [], [], []
        for t in range(self.sessions):
            items = np.asarray(stream[t].gallery_ids, np.int64)
            items = items[numpy_rng(self.scenario.seed, "timeline-arrivals", t).permutation(len(items))]
            ids.append(items)
            times.append((t - 1) * interval + (np.arange(1, len(items) + 1) / max(len(items), 1)) * interval)
            owner.append(np.full(len(items), t, np.int64))
        self.arrival_ids = np.concatenate(ids) if ids else np.empty(0, np.int64)
        self.arrival_time = np.concatenate(times) if times else np.empty(0)
        self.arrival_session = np.concatenate(owner) if owner else np.empty(0, np.int64)
        self.admitted = 0  # arrivals [0, admitted) are in the gallery
        # The queries: every held-out query of the stream, asked once its class has an item in the gallery.
        pool = np.unique(np.concatenate([stream[t].query_ids for t in range(self.sessions)])) if self.sessions else np.empty(0, np.int64)
        self.query_ids = pool.astype(np.int64)
        self.query_classes = sim.labels_of(self.query_ids).astype(np.int64)
        self.query_home = stream.home_of(self.query_classes)
        self.gallery = Gallery(self.scenario.model.embedding_dim, self.scenario.gallery, seed=self.scenario.seed)
        # Per arrival, in admission order (= gallery item id): the generation whose embedding space its vector is in.
        self._space = np.full(len(self.arrival_ids), -1, np.int64)
        self.reference: Gallery | None = None  # the present items, all embedded by the serving generation
        self.serving = self.previous = -1
        self.target = -1  # the backfill worker's current target, -1 when idle
        self.models: dict[int, torch.nn.Module] = {}
        self.embeddings: dict[int, _Embeddings] = {}
        self.queries: dict[int, np.ndarray] = {}
        self.throughput: dict[int, Throughput] = {}
        self.adapter: np.ndarray | None = None
        self.accel_hours = dict.fromkeys(JOBS, 0.0)
        self.backfilled = 0
        self.rows: list[dict] = []
        self._billed_until = 0.0

    @property
    def space(self) -> np.ndarray:
        """Per gallery item (the admitted arrivals): the generation whose embedding space its vector is in (a view)."""
        return self._space[: self.admitted]

    # -- the run ------------------------------------------------------------------------------------

    def run(self) -> TimelineResult:
        self.env.process(self._sessions())
        self.env.process(self._ingest())
        self.env.process(self._backfill_worker())
        self.env.process(self._evaluations())
        self.env.run(until=self.horizon)
        if not self.rows or self.rows[-1]["kind"] != "evaluate" or self.rows[-1]["time_hours"] < self.horizon:
            self._evaluate("horizon")
        frame = pd.DataFrame(self.rows, columns=TIMELINE_COLUMNS)
        return TimelineResult(frame=frame, summary=summarize(frame, horizon=self.horizon), gallery=self.gallery)

    def _sessions(self):
        interval = self.spec.session_interval_hours
        for t in range(self.sessions):
            yield self.env.timeout(max(0.0, t * interval - self.env.now))
            self._row("train_start", session=t)
            trained = self.learning.train(t)
            tp = self._throughput_of(trained.generation, trained.model)
            extra = max(trained.forwards - trained.images, 0)
            accel_hours = self.scale * (trained.images / tp.train + extra / tp.embed) / 3600
            yield self.env.timeout(accel_hours / self.spec.accelerators.train)
            self.accel_hours["train"] += accel_hours  # billed as each job completes
            if trained.generation in (self.serving, self.target) or trained.generation in self.models:
                continue  # no training step changed the model (a frozen method): nothing new to deploy
            self.models[trained.generation] = trained.model
            if self.spec.deploy == "hot" or self.serving < 0:
                self._deploy(trained.generation)
            self.targets.put(trained.generation)

    def _ingest(self):
        """An `arrive` row at the end of each session's arrival window (items are admitted whenever anything looks)."""
        if self.spec.ingest != "continuous":
            return
        interval = self.spec.session_interval_hours
        for t in range(self.sessions):
            yield self.env.timeout(max(0.0, t * interval - self.env.now))
            self._admit()
            self._row("arrive", session=t, detail={"items": int(np.sum(self.arrival_session == t))})

    def _evaluations(self):
        step, k = self.spec.eval_every_hours, 0
        while True:
            yield self.env.timeout(max(0.0, k * step - self.env.now))
            if self.serving >= 0:
                self._evaluate("scheduled")
            k += 1

    def _backfill_worker(self):
        while True:
            target = yield self.targets.get()
            while self.targets.items:  # only the newest generation is worth re-embedding into
                target = yield self.targets.get()
            yield from self._backfill(target)

    # -- backfill -----------------------------------------------------------------------------------

    def _backfill(self, target: int):
        spec = self.scenario.backfill
        self._admit()
        self.target, self.backfilled = target, 0
        policy = BACKFILL_POLICIES.get(spec.policy)
        accelerators = self.spec.accelerators.backfill
        tp = self.throughput[target]
        uncertainty = None
        started = False
        if policy.maps and len(stale_items(self.gallery, target)):
            self._row("backfill_start")
            started = True
            uncertainty, mapped, hours = self._transform(target)
            yield self.env.timeout(hours / accelerators)
            self.accel_hours["backfill"] += hours
            mapped()
            self._row("backfill_chunk", detail={"transformed": True})
            if self.targets.items:
                return self._retargeted(target)
        plan = plan_backfill(spec, gallery=self.gallery, generation=target, rng=numpy_rng(self.scenario.seed, "timeline-backfill", target),
                             uncertainty=uncertainty)
        covers_all = len(plan) == len(stale_items(self.gallery, target))
        if len(plan) and not started:
            self._row("backfill_start")
            started = True
        while len(plan):
            for start in range(0, len(plan), self.spec.chunk_items):
                chunk = plan[start : start + self.spec.chunk_items]
                yield self.env.timeout(self.scale * len(chunk) / (accelerators * tp.embed) / 3600)
                self.accel_hours["backfill"] += self.scale * len(chunk) / tp.embed / 3600
                self._admit()
                vectors = self._embeddings_of(target).get(self.gallery.sample_ids_of(chunk))
                self.gallery.replace(chunk, vectors, session=target, generation=target)
                self.space[chunk] = target
                self.backfilled += len(chunk)
                self._row("backfill_chunk")
                if self.targets.items:
                    return self._retargeted(target)
            self._admit()
            # A policy that re-embeds every stale item goes on with what arrived stale meanwhile (under after-backfill).
            plan = stale_items(self.gallery, target) if covers_all else np.empty(0, np.int64)
        if started:
            self._row("backfill_done")
        self.target = -1
        if target != self.serving:
            self._deploy(target)  # after-backfill: queries switch the instant the last chunk is in
        elif started:
            self._evaluate("backfill_done")
        self._release()

    def _retargeted(self, target: int) -> None:
        self._row("backfill_retarget", detail={"abandoned": target})
        self.target = -1

    def _transform(self, target: int):
        """Learn psi on stale items embedded by both generations, then map the others. Returns (uncertainty, apply,
        accelerator-hours); the gallery changes when `apply()` is called, at the mapping's completion."""
        spec = self.scenario.backfill
        tp = self.throughput[target]
        stale = stale_items(self.gallery, target)
        rng = numpy_rng(self.scenario.seed, "timeline-transform", target)
        pairs = transform_pairs(stale, preferred=np.empty(0, np.int64), count=spec.train_items, rng=rng)
        old = self.gallery.vectors(pairs)
        new = self._embeddings_of(target).get(self.gallery.sample_ids_of(pairs))
        fitted = fit_transform(old, new, hidden=spec.hidden, epochs=spec.epochs, lr=spec.lr,
                               generator=torch_generator(self.scenario.seed, "timeline-transform", target), device=self.sim.device)
        rest = np.setdiff1d(stale, pairs)
        mapped, variance = fitted.apply(self.gallery.vectors(rest))
        # Learning psi is a fixed cost per update; mapping grows with the gallery.
        hours = (len(pairs) / tp.embed + fitted.forwards * TRAIN_STEP_FORWARDS / tp.transform + self.scale * len(rest) / tp.transform) / 3600

        def apply() -> None:
            self._admit()
            self.gallery.replace(pairs, new, session=target, generation=target)
            self.gallery.replace(rest, mapped, session=target, transformed=True)
            self.space[pairs] = target
            self.space[rest] = target

        return dict(zip(rest.tolist(), variance.tolist())), apply, hours

    # -- deploys and arrivals ---------------------------------------------------------------------------

    def _deploy(self, generation: int) -> None:
        self._admit()  # what arrived until now is embedded by the generation that served then
        self.previous, self.serving = self.serving, generation
        if self.spec.ingest == "at-deploy":
            before = self.admitted
            self._admit(through_session=generation)
            self._row("arrive", session=generation, detail={"items": int(self.admitted - before)})
        else:
            self._admit()  # items that waited for a first model
        present = self.gallery.sample_ids_of(np.arange(len(self.gallery)))
        self.reference = Gallery(self.models[generation].embedding_dim, IndexSpec.of(None), seed=self.scenario.seed)
        if len(present):
            self.reference.add(self._embeddings_of(generation).get(present), sample_ids=present,
                               class_ids=self.sim.labels_of(present), session=generation, generation=generation)
        self.adapter = self._fit_adapter() if self.spec.queries == "adapter" else None
        self._row("deploy", session=generation, detail={"replaced": self.previous})
        self._evaluate("deploy")
        self._release()

    def _admit(self, through_session: int | None = None) -> None:
        """Put into the gallery every item that has arrived (continuous) or whose session is deployed (at-deploy).
        Called first by everything that changes the gallery or the serving generation: the serving cost until now is
        billed at the state that held until now."""
        self._bill_serving()
        if self.serving < 0:
            return  # no model yet: arrivals wait for the first deploy
        if through_session is not None:
            end = int(np.searchsorted(self.arrival_session, through_session, side="right"))
        elif self.spec.ingest == "continuous":
            end = int(np.searchsorted(self.arrival_time, self.env.now, side="right"))
        else:
            return
        if end <= self.admitted:
            return
        ids, sessions = self.arrival_ids[self.admitted : end], self.arrival_session[self.admitted : end]
        self._space[self.admitted : end] = self.serving
        self.admitted = end
        vectors = self._embeddings_of(self.serving).get(ids)
        for t in np.unique(sessions):
            mine = sessions == t
            self.gallery.add(vectors[mine], sample_ids=ids[mine], class_ids=self.sim.labels_of(ids[mine]), session=int(t), generation=self.serving)
            if self.reference is not None:
                self.reference.add(vectors[mine], sample_ids=ids[mine], class_ids=self.sim.labels_of(ids[mine]), session=int(t),
                                   generation=self.serving)
        self.accel_hours["ingest"] += self.scale * len(ids) / self.throughput[self.serving].embed / 3600

    def _fit_adapter(self) -> np.ndarray | None:
        """Least squares from the serving generation's embeddings to the previous one's, on items both embedded."""
        older = np.flatnonzero(self.space != self.serving)
        if self.previous < 0 or len(older) == 0:
            return None
        count = self.scenario.backfill.train_items
        pairs = np.sort(numpy_rng(self.scenario.seed, "timeline-adapter", self.serving).permutation(older)[:count])
        old = self.gallery.vectors(pairs).astype(np.float64)
        new = self._embeddings_of(self.serving).get(self.gallery.sample_ids_of(pairs)).astype(np.float64)
        self.accel_hours["train"] += len(pairs) / self.throughput[self.serving].embed / 3600
        ridge = 1e-3 * np.eye(new.shape[1])
        return np.linalg.solve(new.T @ new + ridge, new.T @ old).astype(np.float32)

    # -- evaluation -------------------------------------------------------------------------------------

    def _query_vectors(self, generation: int) -> np.ndarray:
        """The pool's queries embedded by `generation`: first the ones its session asks, in one call, as the engine's
        evaluation embeds them (the same vectors to the bit), then the rest."""
        if generation not in self.queries:
            asked = np.asarray(self.sim.stream[generation].query_ids, np.int64)
            rest = np.setdiff1d(self.query_ids, asked)
            model = self.models[generation]
            vectors = np.empty((len(self.query_ids), model.embedding_dim), np.float32)
            for ids in (asked, rest):
                if len(ids):
                    vectors[np.searchsorted(self.query_ids, ids)] = self.sim.embed(ids, model)
            self.queries[generation] = vectors
        return self.queries[generation]

    def _evaluate(self, why: str) -> None:
        self._admit()
        if self.serving < 0 or len(self.gallery) == 0:
            self._row("evaluate", detail={"why": why})
            return
        asked = self.gallery.class_counts(self.query_classes) > 0
        classes, home = self.query_classes[asked], self.query_home[asked]
        vectors = self._query_vectors(self.serving)[asked]
        spec = self.scenario.evaluation
        older = np.flatnonzero(self.space != self.serving)
        if self.spec.queries == "new" or len(older) == 0 or (self.spec.queries == "dual" and self.previous < 0) or (
            self.spec.queries == "adapter" and self.adapter is None
        ):
            per_query = score_queries(vectors, classes, self.gallery, recall_at=[1], map_at_r=spec.map_at_r)
        else:
            if self.spec.queries == "dual":
                other = self._query_vectors(self.previous)[asked]
            else:
                other = vectors @ self.adapter
                other /= np.maximum(np.linalg.norm(other, axis=1, keepdims=True), 1e-12)
            per_query = self._merged(vectors, other, classes, older, map_at_r=spec.map_at_r)
        reference = score_queries(vectors, classes, self.reference, recall_at=[1], map_at_r=spec.map_at_r)
        serving_session = self.serving
        masks = {"old": home < serving_session, "new": home == serving_session, "ahead": home > serving_session,
                 "all": np.ones(len(home), dtype=bool)}
        values = {}
        for subset, mask in masks.items():
            values[f"r1_{subset}"] = float(per_query["recall@1"][mask].mean()) if mask.any() else np.nan
            values[f"map_{subset}"] = float(np.nanmean(per_query["map@r"][mask])) if spec.map_at_r and mask.any() else np.nan
        values["r1_full"] = float(reference["recall@1"].mean())
        values["map_full"] = float(np.nanmean(reference["map@r"])) if spec.map_at_r else np.nan
        self._row("evaluate", n_queries=int(asked.sum()), detail={"why": why}, **values)

    def _merged(self, queries: np.ndarray, other: np.ndarray, classes: np.ndarray, older: np.ndarray, *, map_at_r: bool):
        """Dual query / adapter: `queries` search the serving generation's items, `other` the older ones, each through
        the gallery's own search (narrower segments as `gallery.narrow_queries` says); merged by score."""
        k = int(neighbors_per_query(classes, self.gallery, recall_at=[1], map_at_r=map_at_r).max())
        ids = search_two_spaces(self.gallery, queries, other, own=np.flatnonzero(self.space == self.serving), older=older, k=k)
        return score_neighbors(ids, classes, self.gallery, recall_at=[1], map_at_r=map_at_r)

    # -- bookkeeping ------------------------------------------------------------------------------------

    def _throughput_of(self, generation: int, model: torch.nn.Module) -> Throughput:
        if generation not in self.throughput:
            self.throughput[generation] = resolve_throughput(
                self.spec, model, tuple(self.sim.images.shape[1:]), hidden=self.scenario.backfill.hidden, images=self.sim.images,
                flops=self.sim.backbone_flops(generation, model),  # the costs' count of this generation, shared
            )
        return self.throughput[generation]

    def _embeddings_of(self, generation: int) -> _Embeddings:
        """`generation`'s item embeddings; the gallery widens first where the generation is wider (a model upgrade)."""
        if generation not in self.embeddings:
            model = self.models[generation]
            if model.embedding_dim > self.gallery.dim:
                self.gallery.widen(model.embedding_dim)
            self.embeddings[generation] = _Embeddings(lambda ids: self.sim.embed(ids, model), len(self.sim.images))
        return self.embeddings[generation]

    def _release(self) -> None:
        """Keep alive only the generations still needed: the serving one, the backfill's target, any not yet deployed."""
        needed = {self.serving, self.target, *self.targets.items}
        for g in [g for g in self.models if g not in needed]:
            del self.models[g]
            self.embeddings.pop(g, None)
        keep_queries = {self.serving, self.previous} if self.spec.queries == "dual" else {self.serving}
        for g in [g for g in self.queries if g not in keep_queries]:
            del self.queries[g]

    def _bill_serving(self) -> None:
        now = self.env.now
        if self.serving >= 0 and now > self._billed_until:
            forwards = 2 if self.spec.queries == "dual" and np.any(self.space != self.serving) else 1
            self.accel_hours["serve"] += (now - self._billed_until) * self.spec.queries_per_hour * forwards / self.throughput[self.serving].embed / 3600
        self._billed_until = max(self._billed_until, now)

    def _row(self, kind: str, *, session: int = -1, n_queries: int = 0, detail: dict | None = None, **values) -> None:
        self._bill_serving()
        newest = self.target if self.target >= 0 else self.serving
        items = len(self.gallery)
        row = {
            "time_hours": float(self.env.now), "kind": kind, "session": session, "serving_generation": self.serving,
            "target_generation": self.target, "backfilled_fraction": float(np.mean(self.space == newest)) if items else 0.0,
            "backfilled_items": self.backfilled, "gallery_items": items,
            "stale_items": int(np.sum(self.space != newest)) if items else 0, "n_queries": n_queries,
            **{c: np.nan for c in TIMELINE_COLUMNS if c.startswith(("r1_", "map_"))}, **values,
            **{f"accel_hours_{job}": hours for job, hours in self.accel_hours.items()},
            "detail": json.dumps(detail or {}),
        }
        self.rows.append(row)


# -- the dual query and the adapter -------------------------------------------------------------------


def search_two_spaces(gallery: Gallery, queries: np.ndarray, other: np.ndarray, *, own: np.ndarray, older: np.ndarray, k: int) -> np.ndarray:
    """The top k item ids of a dual query or an adapter: `queries` search the items `own` (the serving generation's),
    `other` the `older` ones, each through the gallery's own search (narrower segments as `gallery.narrow_queries`
    says), merged by score; a tie goes to the serving generation's item."""
    k = min(k, len(gallery))
    found = [gallery.search(q, k, items=items) for q, items in ((other, older), (queries, own)) if len(items)]
    return merge_top_k(found, k)[1]


# -- summary figures ----------------------------------------------------------------------------------


def summarize(frame: pd.DataFrame, *, horizon: float) -> dict:
    """Quality-time area, recovery hours and worst dip per deploy, and accelerator-hours by job (SPEC section 11).

    R@1 (all) is a step function: each evaluation's value holds until the next one. The area is its mean over
    [first evaluation, horizon]. A deploy has recovered at the first evaluation from it on whose R@1 (all) is
    within 0.01 of the reference (the same items all embedded by the serving generation); its dip is the R@1
    (all) just before the deploy minus the lowest value from the deploy to its recovery (or to the next deploy).
    """
    evaluated = frame[(frame.kind == "evaluate") & frame.r1_all.notna()].reset_index(drop=True)
    out: dict = {"horizon_hours": float(horizon)}
    last = frame.iloc[-1] if len(frame) else None
    for job in JOBS:
        out[f"accel_hours_{job}"] = float(last[f"accel_hours_{job}"]) if last is not None else 0.0
    if evaluated.empty:
        out.update(quality_time_area=float("nan"), recovery_hours_mean=float("nan"), recovery_hours_max=float("nan"),
                   unrecovered_deploys=0, worst_dip=float("nan"), deploys=0)
        return out
    times = evaluated.time_hours.to_numpy()
    values = evaluated.r1_all.to_numpy()
    ends = np.append(times[1:], max(horizon, times[-1]))
    span = ends[-1] - times[0]
    out["quality_time_area"] = float(np.sum(values * (ends - times)) / span) if span > 0 else float(values[-1])
    deploy_times = frame[frame.kind == "deploy"].time_hours.to_numpy()
    recoveries, dips, unrecovered = [], [], 0
    for i, at in enumerate(deploy_times):
        until = deploy_times[i + 1] if i + 1 < len(deploy_times) else np.inf
        window = evaluated[(evaluated.time_hours >= at) & (evaluated.time_hours < until)]
        before = evaluated[evaluated.time_hours < at]
        ok = window[window.r1_all >= window.r1_full - RECOVERY_TOLERANCE]
        if len(ok):
            recoveries.append(float(ok.time_hours.iloc[0] - at))
            window = window.loc[: ok.index[0]]
        else:
            unrecovered += 1
        if len(before) and len(window):
            dips.append(float(before.r1_all.iloc[-1] - window.r1_all.min()))
    out["recovery_hours_mean"] = float(np.mean(recoveries)) if recoveries else float("nan")
    out["recovery_hours_max"] = float(np.max(recoveries)) if recoveries else float("nan")
    out["unrecovered_deploys"] = int(unrecovered)
    out["worst_dip"] = float(max(dips)) if dips else 0.0
    out["deploys"] = int(len(deploy_times))
    return out
