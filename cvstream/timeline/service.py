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
- *evaluation*: every `eval_every_hours`, right after every deploy and every completed backfill, and whenever
  the served gallery has changed by more than `eval_min_change` of its items (arrivals, re-embedded or mapped
  items): the held-out queries of every class with an item in the gallery are answered against the gallery as
  users' queries search it then, and against the same items all embedded by the serving generation (`r1_full`)
  and by the newest trained one (`r1_best`). Right before a deploy's switch the serving state is evaluated on
  the query set of right after it: the dip's baseline.

Under `deploy: after-backfill` the re-embedded vectors wait beside the served ones until the switch (both
generations' vectors are alive: the memory column counts them); under `hot` they replace them in place.
Serving is billed per query: its forwards, its search by index type over the service's gallery (`item_scale`
x the simulated one) and the adapter's map, against `accelerators.serve`.

Every item is searchable from its arrival on: the gallery admits what has arrived before anything looks
at it or changes it. Only the generations still needed are kept alive: the serving one, the backfill's
target and the newest trained (a query cache of the previous one for `queries: dual`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial

import faiss
import numpy as np
import pandas as pd
import simpy
import torch

from cvstream.errors import UserError
from cvstream.evaluation.evaluator import neighbors_per_query, score_neighbors, score_queries, subset_means
from cvstream.evaluation.retrieval import home_subsets
from cvstream.gallery import Gallery
from cvstream.gallery.backfill import BACKFILL_POLICIES, fit_transform, plan_backfill, stale_items, transform_pairs
from cvstream.gallery.index import IndexSpec, match_queries, merge_top_k
from cvstream.models.flops import TRAIN_STEP_FORWARDS
from cvstream.sessions.rng import numpy_rng, torch_generator
from cvstream.simulator.generations import Generation, load_generation
from cvstream.timeline.throughput import Throughput, resolve_throughput, search_flops, vector_bytes

JOBS = ("train", "backfill", "serve", "ingest", "adapter")
SUBSETS = ("old", "new", "ahead", "all")
TIMELINE_COLUMNS = [
    "time_hours", "kind", "session", "serving_generation", "target_generation", "backfilled_fraction", "backfilled_items",
    "gallery_items", "stale_items", "n_queries", *[f"r1_{s}" for s in SUBSETS], *[f"map_{s}" for s in SUBSETS],
    "r1_full", "map_full", "r1_best", "map_best", "negative_flips", "search_flops_per_query", "serve_utilization", "gallery_bytes",
    "memory_bytes", *[f"accel_hours_{job}" for job in JOBS], "detail",
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
        self.index_spec = IndexSpec.of(self.scenario.gallery)
        self.learning = LearningSide(sim)
        self.env = simpy.Environment()
        self.targets = simpy.Store(self.env)  # generations the backfill worker should move the gallery to
        self.first_deploy = self.env.event()
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
        # Under after-backfill the served vectors of re-embedded items, held until the switch: per arrival the space of
        # its held vector (-1: none held), and the vectors by item.
        self._held_space = np.full(len(self.arrival_ids), -1, np.int64)
        self.held_vectors: dict[int, np.ndarray] = {}
        # The references: per generation, the present items all embedded by it (the serving one: r1_full; the newest
        # trained one: r1_best), and each one's last score with the gallery size and query count it was taken at.
        self.references: dict[int, Gallery] = {}
        self._reference_scores: dict[int, tuple[int, int, dict]] = {}
        self.serving = self.previous = self.newest = -1
        self.target = -1  # the backfill worker's current target, -1 when idle
        self.models: dict[int, torch.nn.Module] = {}
        self.dims: dict[int, int] = {}  # every trained generation's embedding width (stored vectors keep it)
        self.embeddings: dict[int, _Embeddings] = {}
        self.queries: dict[int, np.ndarray] = {}
        self.throughput: dict[int, Throughput] = {}
        self.adapter: np.ndarray | None = None
        self.accel_hours = dict.fromkeys(JOBS, 0.0)
        self.backfilled = 0
        self.changed = 0  # served items added, re-embedded or mapped since the last evaluation
        self._last_correct = np.full(len(self.query_ids), np.nan)  # per query: right at R@1 at the last evaluation
        self._hnsw_visited: float | None = None  # distances an HNSW search visited per query, last measured
        self.rows: list[dict] = []
        self._billed_until = 0.0
        self._serving_cost = {"seconds_per_query": 0.0, "search_flops": 0.0}

    @property
    def space(self) -> np.ndarray:
        """Per gallery item (the admitted arrivals): the generation whose embedding space its vector is in (a view)."""
        return self._space[: self.admitted]

    @property
    def held_space(self) -> np.ndarray:
        """Per gallery item: the space of its held vector, -1 where none is held (a view)."""
        return self._held_space[: self.admitted]

    def served_space(self) -> np.ndarray:
        """Per gallery item: the space of the vector users' queries search (a held item's is its pre-backfill one)."""
        held = self.held_space
        return np.where(held >= 0, held, self.space)

    # -- the run ------------------------------------------------------------------------------------

    def run(self) -> TimelineResult:
        self.env.process(self._sessions())
        self.env.process(self._ingest())
        self.env.process(self._arrival_changes())
        self.env.process(self._backfill_worker())
        self.env.process(self._evaluations())
        self.env.run(until=self.horizon)
        if not self.rows or self.rows[-1]["kind"] != "evaluate" or self.rows[-1]["time_hours"] < self.horizon:
            self._evaluate("horizon")
        frame = pd.DataFrame(self.rows, columns=TIMELINE_COLUMNS)
        summary = summarize(frame, horizon=self.horizon, price_per_hour=self.spec.accelerator.price_per_hour,
                            queries_per_hour=self.spec.queries_per_hour, memory_price=self.spec.memory.price_per_tb_hour,
                            memory_billing=self.spec.memory.billing)
        return TimelineResult(frame=frame, summary=summary, gallery=self.gallery)

    def _sessions(self):
        interval = self.spec.session_interval_hours
        for t in range(self.sessions):
            yield self.env.timeout(max(0.0, t * interval - self.env.now))
            self._row("train_start", session=t)
            trained = self.learning.train(t)
            tp = self._throughput_of(trained.generation, trained.model)
            extra = max(trained.forwards - trained.images, 0)
            accel_hours = self.spec.train_scale * (trained.images / tp.train + extra / tp.embed) / 3600
            yield self.env.timeout(accel_hours / self.spec.accelerators.train)
            self.accel_hours["train"] += accel_hours  # billed as each job completes
            if trained.generation in (self.serving, self.target) or trained.generation in self.models:
                continue  # no training step changed the model (a frozen method): nothing new to deploy
            self.models[trained.generation] = trained.model
            self.dims[trained.generation] = trained.model.embedding_dim
            self.newest = trained.generation
            if self.spec.deploy == "hot" or self.serving < 0:
                self._deploy(trained.generation)
            else:
                self._reference(trained.generation)  # r1_best: the newest generation, before it serves
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

    def _arrival_changes(self):
        """Under continuous ingest, wake when the arrivals since the last evaluation would exceed `eval_min_change`."""
        if self.spec.ingest != "continuous":
            return
        yield self.first_deploy
        while self.admitted < len(self.arrival_ids):
            needed = max(1, int(np.floor(self.spec.eval_min_change * len(self.gallery))) + 1 - self.changed)
            at = self.arrival_time[min(self.admitted + needed, len(self.arrival_ids)) - 1]
            yield self.env.timeout(max(0.0, at - self.env.now))
            self._admit()
            self._after_change()

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
            self._after_change()
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
                self._store(chunk, vectors, session=target, generation=target)
                self.backfilled += len(chunk)
                self._row("backfill_chunk")
                self._after_change()
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

    def _store(self, items: np.ndarray, vectors: np.ndarray, *, session: int, generation: int | None = None, transformed: bool = False) -> None:
        """Write re-embedded (or mapped) vectors into the gallery. While the serving generation is not the target
        (after-backfill), the served vectors of these items are held beside the new ones until the switch: users'
        queries still search them (two generations' vectors are alive, the memory column counts both)."""
        if self.target != self.serving and self.spec.deploy == "after-backfill":
            fresh = np.asarray(items, np.int64)[self.held_space[items] < 0]
            if len(fresh):
                self.held_vectors.update(zip(fresh.tolist(), self.gallery.vectors(fresh)))
                self.held_space[fresh] = self.space[fresh]
        else:
            self.changed += len(items)
        self.gallery.replace(items, vectors, session=session, generation=generation, transformed=transformed)
        self.space[items] = self.target

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
            self._store(pairs, new, session=target, generation=target)
            self._store(rest, mapped, session=target, transformed=True)

        return dict(zip(rest.tolist(), variance.tolist())), apply, hours

    # -- deploys and arrivals ---------------------------------------------------------------------------

    def _deploy(self, generation: int) -> None:
        self._admit()  # what arrived until now is embedded by the generation that served then
        if generation not in self.references:
            self._reference(generation)  # r1_best from right before the switch on, r1_full after it
        if self.serving >= 0:
            # The dip's baseline: the state serving until now, on the query set of the instant after the switch.
            arriving = self.arrival_ids[self.admitted : self._admission_end(through_session=generation)]
            self._evaluate("before_switch", also_classes=self.sim.labels_of(arriving))
        self.previous, self.serving = self.serving, generation
        self._held_space[:] = -1  # the switch: the re-embedded vectors serve, the old ones are dropped
        self.held_vectors = {}
        if self.spec.ingest == "at-deploy":
            before = self.admitted
            self._admit(through_session=generation)
            self._row("arrive", session=generation, detail={"items": int(self.admitted - before)})
        else:
            self._admit()  # items that waited for a first model
        self.adapter = None
        if self.spec.queries == "adapter" and self.previous >= 0:
            self.env.process(self._fit_adapter(generation))
        self._row("deploy", session=generation, detail={"replaced": self.previous})
        self._evaluate("deploy")
        self._release()
        if not self.first_deploy.triggered:
            self.first_deploy.succeed()

    def _admission_end(self, through_session: int | None = None) -> int:
        """How many arrivals the gallery holds once it admits what has arrived (or, at-deploy, what is deployed)."""
        if self.serving < 0 and through_session is None:
            return self.admitted
        if through_session is not None and self.spec.ingest == "at-deploy":
            return max(self.admitted, int(np.searchsorted(self.arrival_session, through_session, side="right")))
        if self.spec.ingest == "continuous":
            return max(self.admitted, int(np.searchsorted(self.arrival_time, self.env.now, side="right")))
        return self.admitted

    def _admit(self, through_session: int | None = None) -> None:
        """Put into the gallery every item that has arrived (continuous) or whose session is deployed (at-deploy).
        Called first by everything that changes the gallery or the serving generation: the serving cost until now is
        billed at the state that held until now."""
        self._bill_serving()
        if self.serving < 0:
            return  # no model yet: arrivals wait for the first deploy
        end = self._admission_end(through_session)
        if end <= self.admitted:
            return
        ids, sessions = self.arrival_ids[self.admitted : end], self.arrival_session[self.admitted : end]
        self._space[self.admitted : end] = self.serving
        self.admitted = end
        self.changed += len(ids)
        classes = self.sim.labels_of(ids)
        for gallery, generation in [(self.gallery, self.serving), *((g, gen) for gen, g in self.references.items())]:
            vectors = self._embeddings_of(generation).get(ids)
            for t in np.unique(sessions):
                mine = sessions == t
                gallery.add(vectors[mine], sample_ids=ids[mine], class_ids=classes[mine], session=int(t), generation=self.serving)
        self.accel_hours["ingest"] += self.scale * len(ids) / self.throughput[self.serving].embed / 3600

    def _reference(self, generation: int) -> None:
        """The present items all embedded by `generation`: what a completed full backfill to it would serve (r1_full
        while it serves, r1_best while it is the newest trained)."""
        present = self.gallery.sample_ids_of(np.arange(len(self.gallery)))
        reference = Gallery(self.dims[generation], IndexSpec.of(None), seed=self.scenario.seed)
        if len(present):
            reference.add(self._embeddings_of(generation).get(present), sample_ids=present, class_ids=self.sim.labels_of(present),
                          session=generation, generation=generation)
        self.references[generation] = reference
        self._reference_scores.pop(generation, None)

    def _fit_adapter(self, generation: int):
        """Least squares from the serving generation's embeddings into the previous generation's space, on items whose
        stored vector is the previous generation's own; a job of its own: queries use it once it is fitted."""
        own = self.gallery.generations()[: self.admitted] == self.previous  # embedded by it, not mapped into its space
        pairs = np.flatnonzero((self.space == self.previous) & own)
        if len(pairs) == 0:
            return
        pairs = np.sort(numpy_rng(self.scenario.seed, "timeline-adapter", generation).permutation(pairs)[: self.scenario.backfill.train_items])
        old = self.gallery.vectors(pairs)[:, : self.dims[self.previous]].astype(np.float64)
        new = self._embeddings_of(generation).get(self.gallery.sample_ids_of(pairs)).astype(np.float64)
        ridge = 1e-3 * np.eye(new.shape[1])
        fitted = np.linalg.solve(new.T @ new + ridge, new.T @ old).astype(np.float32)
        a = self.spec.accelerator
        solve_flops = 2.0 * len(pairs) * new.shape[1] * (new.shape[1] + old.shape[1]) + 2.0 * new.shape[1] ** 3 / 3
        hours = (len(pairs) / self.throughput[generation].embed + solve_flops / (a.tflops * 1e12 * a.utilization)) / 3600
        yield self.env.timeout(hours / self.spec.accelerators.backfill)
        self.accel_hours["adapter"] += hours
        if self.serving == generation:
            self.adapter = fitted
            self._row("adapter_ready", session=generation, detail={"pairs": int(len(pairs))})
            self._evaluate("adapter_ready")

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

    def _after_change(self) -> None:
        """Evaluate when the served gallery has changed by more than `eval_min_change` of its items since the last look."""
        if self.serving >= 0 and self.changed > self.spec.eval_min_change * len(self.gallery):
            self._evaluate("changed")

    def _evaluate(self, why: str, *, also_classes: np.ndarray | None = None) -> None:
        """Answer the queries of every class with an item in the gallery (and of `also_classes`) against the gallery as
        users' queries search it now, with the references (r1_full, r1_best) and the negative flips since the last look."""
        self._admit()
        if self.serving < 0 or len(self.gallery) == 0:
            self._row("evaluate", detail={"why": why})
            return
        asked = self.gallery.class_counts(self.query_classes) > 0
        if also_classes is not None and len(also_classes):
            asked |= np.isin(self.query_classes, also_classes)
        spec = self.scenario.evaluation
        per_query = self._score_served(asked, map_at_r=spec.map_at_r)
        home = self.query_home[asked]
        prefix = {"recall@1": "r1", "map@r": "map"}
        values = {f"{prefix[metric]}_{subset}": mean
                  for subset, metric, mean, _ in subset_means(per_query, home_subsets(home, self.serving, ahead=True))}
        forced = why not in ("scheduled", "changed")
        full = self._reference_score(self.serving, asked, force=forced)
        best = full if self.newest == self.serving else self._reference_score(self.newest, asked, force=forced)
        values.update(r1_full=full["r1"], map_full=full["map"], r1_best=best["r1"], map_best=best["map"])
        correct = per_query["recall@1"]
        previous = self._last_correct[asked]
        values["negative_flips"] = int(np.sum((previous == 1.0) & (correct == 0.0)))
        self._last_correct[asked] = correct
        self.changed = 0
        self._row("evaluate", n_queries=int(asked.sum()), detail={"why": why}, **values)

    def _score_served(self, asked: np.ndarray, *, map_at_r: bool) -> dict[str, np.ndarray]:
        """Per-query scores of the served state: the serving generation's queries (and, while the gallery is mixed, the
        previous generation's under `dual` or the adapter's map under `adapter`, each searching the older items)
        against the served vectors."""
        classes = self.query_classes[asked]
        vectors = self._query_vectors(self.serving)[asked]
        space = self.served_space()
        older = np.flatnonzero(space != self.serving)
        other = None
        if len(older) and self.spec.queries == "dual" and self.previous >= 0:
            other = self._query_vectors(self.previous)[asked]
        elif len(older) and self.spec.queries == "adapter" and self.adapter is not None:
            other = vectors @ self.adapter
            other /= np.maximum(np.linalg.norm(other, axis=1, keepdims=True), 1e-12)
        hnsw = self.index_spec.index == "hnsw"
        if hnsw:
            faiss.cvar.hnsw_stats.reset()
        if other is None and not self.held_vectors:
            per_query = score_queries(vectors, classes, self.gallery, recall_at=[1], map_at_r=map_at_r)
        else:
            k = int(neighbors_per_query(classes, self.gallery, recall_at=[1], map_at_r=map_at_r).max())
            parts = [(vectors, np.arange(len(self.gallery)))] if other is None else [(other, older), (vectors, np.flatnonzero(space == self.serving))]
            ids = search_parts(self.gallery, parts, k, held_space=self.held_space, held_vectors=self.held_vectors, dims=self.dims)
            per_query = score_neighbors(ids, classes, self.gallery, recall_at=[1], map_at_r=map_at_r)
        if hnsw and len(classes):
            self._hnsw_visited = faiss.cvar.hnsw_stats.ndis / len(classes)
        return per_query

    def _reference_score(self, generation: int, asked: np.ndarray, *, force: bool) -> dict:
        """R@1 and mAP@R of the queries against `generation`'s reference gallery: scored again when forced (deploys,
        trainings, backfill ends) or when the reference or the query set grew by more than `eval_min_change` since."""
        reference = self.references.get(generation)
        if reference is None or len(reference) == 0:
            return {"r1": np.nan, "map": np.nan}
        n_items, n_queries = len(reference), int(asked.sum())
        last = self._reference_scores.get(generation)
        fraction = self.spec.eval_min_change
        if not force and last is not None and n_items - last[0] <= fraction * n_items and n_queries - last[1] <= fraction * n_queries:
            return last[2]
        spec = self.scenario.evaluation
        scores = score_queries(self._query_vectors(generation)[asked], self.query_classes[asked], reference, recall_at=[1],
                               map_at_r=spec.map_at_r)
        value = {"r1": float(scores["recall@1"].mean()), "map": float(np.nanmean(scores["map@r"])) if spec.map_at_r else np.nan}
        self._reference_scores[generation] = (n_items, n_queries, value)
        return value

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
        needed = {self.serving, self.target, self.newest, *self.targets.items}
        for g in [g for g in self.models if g not in needed]:
            del self.models[g]
            self.embeddings.pop(g, None)
        for g in [g for g in self.references if g not in (self.serving, self.newest)]:
            del self.references[g]
            self._reference_scores.pop(g, None)
        keep_queries = {self.serving, self.previous, self.newest} if self.spec.queries == "dual" else {self.serving, self.newest}
        for g in [g for g in self.queries if g not in keep_queries]:
            del self.queries[g]

    def _serving_state(self) -> dict:
        """What one query costs in the state now: its forwards, its searches (by index type, over the gallery the service
        holds, `item_scale` x the simulated one) and the adapter's map, in accelerator-seconds; and the gallery's bytes."""
        space = self.served_space()
        n = len(space)
        own = int(np.sum(space == self.serving))
        two = n > own and ((self.spec.queries == "dual" and self.previous >= 0) or (self.spec.queries == "adapter" and self.adapter is not None))
        dim = self.dims[self.serving]
        cost = partial(search_flops, self.index_spec, hnsw_visited=self._hnsw_visited, simulated_items=max(n, 2))
        if two:
            other_dim = self.dims[self.previous]
            search = cost(own * self.scale, dim) + cost((n - own) * self.scale, other_dim)
        else:
            search = cost(n * self.scale, dim)
        forwards = 2 if two and self.spec.queries == "dual" else 1
        mapping = 2.0 * self.adapter.size if two and self.spec.queries == "adapter" else 0.0
        a = self.spec.accelerator
        seconds = forwards / self.throughput[self.serving].embed + (search + mapping) / (a.tflops * 1e12 * a.utilization)
        gallery_bytes = self._bytes(space)
        held_bytes = self._bytes(self.held_space[self.held_space >= 0])
        capacity = self.spec.accelerators.serve / seconds if seconds > 0 else np.inf
        return {"seconds_per_query": seconds, "search_flops": search, "forwards": forwards, "capacity_qps": capacity,
                "gallery_bytes": gallery_bytes, "memory_bytes": gallery_bytes + held_bytes}

    def _bytes(self, spaces: np.ndarray) -> float:
        """Bytes the service's index holds for vectors in these spaces (`item_scale` each), by their widths."""
        counts = np.bincount(spaces) if len(spaces) else np.zeros(0, np.int64)
        return self.scale * sum(int(c) * vector_bytes(self.index_spec, self.dims[g]) for g, c in enumerate(counts) if c)

    def _bill_serving(self) -> None:
        """Bill the serving accelerators for the time since the last bill, at the cost of the state that held then."""
        now = self.env.now
        if self.serving >= 0 and now > self._billed_until:
            self.accel_hours["serve"] += (now - self._billed_until) * self.spec.queries_per_hour * self._serving_cost["seconds_per_query"] / 3600
        self._billed_until = max(self._billed_until, now)

    def _row(self, kind: str, *, session: int = -1, n_queries: int = 0, detail: dict | None = None, **values) -> None:
        self._bill_serving()
        newest = self.target if self.target >= 0 else self.serving
        items = len(self.gallery)
        state = self._serving_state() if self.serving >= 0 else {}
        self._serving_cost = state or self._serving_cost
        utilization = self.spec.queries_per_hour / 3600 / state["capacity_qps"] if state else np.nan
        row = {
            "time_hours": float(self.env.now), "kind": kind, "session": session, "serving_generation": self.serving,
            "target_generation": self.target, "backfilled_fraction": float(np.mean(self.space == newest)) if items else 0.0,
            "backfilled_items": self.backfilled, "gallery_items": items,
            "stale_items": int(np.sum(self.space != newest)) if items else 0, "n_queries": n_queries,
            **{c: np.nan for c in TIMELINE_COLUMNS if c.startswith(("r1_", "map_"))}, "negative_flips": np.nan, **values,
            "search_flops_per_query": state.get("search_flops", np.nan), "serve_utilization": utilization,
            "gallery_bytes": state.get("gallery_bytes", 0.0), "memory_bytes": state.get("memory_bytes", 0.0),
            **{f"accel_hours_{job}": hours for job, hours in self.accel_hours.items()},
            "detail": json.dumps(detail or {}),
        }
        self.rows.append(row)


# -- searches of several parts, and the dual query ------------------------------------------------------------


def search_parts(gallery: Gallery, parts: list[tuple[np.ndarray, np.ndarray]], k: int, *, held_space: np.ndarray | None = None,
                 held_vectors: dict | None = None, dims: dict | None = None) -> np.ndarray:
    """The top k item ids of queries that each search their own items (`parts`: (queries, item ids)), each through the
    gallery's own search (narrower segments as `gallery.narrow_queries` says), merged by score; on a tie the later
    part's item comes first. `held_space`: per gallery item, the space of a vector searched instead of the gallery's
    (-1: none), `held_vectors` by item; searched at its space's width (`dims`: space -> width), as the gallery matches
    widths."""
    k = min(k, len(gallery))
    found = []
    for queries, items in parts:
        if not len(items):
            continue
        spaces = held_space[items] if held_space is not None else np.full(len(items), -1, np.int64)
        in_held = spaces >= 0
        if not in_held.all():
            rest = items[~in_held]
            found.append(gallery.search(queries, k, items=None if len(rest) == len(gallery) else rest))
        for space in np.unique(spaces[in_held]):
            mine = items[spaces == space]
            dim = dims[int(space)]
            stored = np.ascontiguousarray(np.stack([held_vectors[int(i)][:dim] for i in mine]), dtype=np.float32)
            view = match_queries(queries, dim, gallery.spec.narrow_queries)
            scores, at = faiss.knn(view, stored, min(k, len(mine)), metric=faiss.METRIC_INNER_PRODUCT)
            found.append((scores, mine[at]))
    return merge_top_k(found, k)[1]


def search_two_spaces(gallery: Gallery, queries: np.ndarray, other: np.ndarray, *, own: np.ndarray, older: np.ndarray, k: int) -> np.ndarray:
    """The top k item ids of a dual query or an adapter: `queries` search the items `own` (the serving generation's),
    `other` the `older` ones; a tie goes to the serving generation's item."""
    return search_parts(gallery, [(other, older), (queries, own)], k)


# -- summary figures ----------------------------------------------------------------------------------


def _why(frame: pd.DataFrame) -> pd.Series:
    """Why each row was written (an evaluation's `detail.why`), "" where the row has none."""
    return frame.detail.map(lambda d: json.loads(d).get("why", "") if isinstance(d, str) else "")


def _area(times: np.ndarray, values: np.ndarray, horizon: float) -> float:
    """Mean of a step function (each value holds until the next time) over [times[0], horizon]."""
    ends = np.append(times[1:], max(horizon, times[-1]))
    span = ends[-1] - times[0]
    return float(np.sum(values * (ends - times)) / span) if span > 0 else float(values[-1])


def per_deploy(frame: pd.DataFrame, *, horizon: float) -> list[dict]:
    """Per deploy: its dip, its recovery (or the hours it stayed unrecovered, censored at the next deploy or the horizon)
    and the negative flips from it to the next deploy (SPEC section 11)."""
    frame = frame.reset_index(drop=True)
    why = _why(frame)
    evaluate = (frame.kind == "evaluate") & frame.r1_all.notna()
    served = evaluate & (why != "before_switch")
    deploys = np.flatnonzero(frame.kind == "deploy")
    out = []
    for i, at_row in enumerate(deploys):
        end_row = deploys[i + 1] if i + 1 < len(deploys) else len(frame)
        at = float(frame.time_hours.iloc[at_row])
        until = float(frame.time_hours.iloc[end_row]) if end_row < len(frame) else max(horizon, at)
        inside = np.zeros(len(frame), bool)
        inside[at_row + 1 : end_row] = True
        window = frame[inside & served]
        baseline = frame.iloc[:at_row][evaluate.iloc[:at_row] & (why.iloc[:at_row] == "before_switch")]
        baseline = baseline[baseline.time_hours == at]
        ok = window[window.r1_all >= window.r1_full - RECOVERY_TOLERANCE]
        recovered = len(ok) > 0
        hours = float(ok.time_hours.iloc[0] - at) if recovered else until - at
        low = window.loc[: ok.index[0]] if recovered else window
        dip = float(baseline.r1_all.iloc[-1] - low.r1_all.min()) if len(baseline) and len(low) else None  # JSON null: no baseline
        flips = frame[inside & evaluate].negative_flips
        generation = frame.serving_generation.iloc[at_row + 1] if at_row + 1 < len(frame) else np.nan
        out.append({"generation": int(generation) if generation == generation else None, "time_hours": at, "recovered": bool(recovered),
                    "recovery_hours": hours, "censored": not recovered, "dip": dip,
                    "r1_before": float(baseline.r1_all.iloc[-1]) if len(baseline) else None,
                    "negative_flips": int(np.nansum(flips.to_numpy(dtype=float)))})
    return out


def summarize(frame: pd.DataFrame, *, horizon: float, price_per_hour: float | None = None, queries_per_hour: float | None = None,
              memory_price: float | None = None, memory_billing: str = "provisioned") -> dict:
    """The summary figures of SPEC section 11: the quality-time area of R@1 (all) and of `r1_best` (their difference is
    the regret), per deploy the dip, the recovery (the mean and max over deploys that recovered, and how many were
    censored: never a 0 for a deploy that did not recover) and the negative flips; accelerator-hours (and money) by
    job, the serving accelerators' utilisation, and the gallery's memory: its peak and its TB-hours, used (each row's
    memory until the next row) and provisioned (the peak over the same hours). With `memory_price` (per TB-hour),
    `cost_memory` bills the `memory_billing` TB-hours, and `cost_total` is the accelerators' cost (where priced) plus it.

    R@1 is a step function: each evaluation's value holds until the next one; the areas are its mean over [first
    evaluation, horizon]. The evaluations `before_switch` (the dip's baseline, at a deploy's instant) take no time.
    """
    out: dict = {"horizon_hours": float(horizon)}
    last = frame.iloc[-1] if len(frame) else None
    for job in JOBS:
        out[f"accel_hours_{job}"] = float(last[f"accel_hours_{job}"]) if last is not None and f"accel_hours_{job}" in frame else 0.0
    out["accel_hours_total"] = float(sum(out[f"accel_hours_{job}"] for job in JOBS))
    if price_per_hour is not None:
        for job in JOBS:
            out[f"cost_{job}"] = out[f"accel_hours_{job}"] * price_per_hour
        out["cost_total"] = out["accel_hours_total"] * price_per_hour
    out.update(_serving_summary(frame, horizon=horizon, queries_per_hour=queries_per_hour))
    if memory_price is not None:
        out["cost_memory"] = out[f"memory_tb_hours_{memory_billing}"] * memory_price
        out["cost_total"] = out.get("cost_total", 0.0) + out["cost_memory"]
    why = _why(frame)
    evaluated = frame[(frame.kind == "evaluate") & frame.r1_all.notna() & (why != "before_switch")]
    deploys = per_deploy(frame, horizon=horizon)
    out["deploys"] = len(deploys)
    recovered = [d["recovery_hours"] for d in deploys if d["recovered"]]
    censored = [d["recovery_hours"] for d in deploys if d["censored"]]
    dips = [d["dip"] for d in deploys if d["dip"] is not None]
    out.update(
        recovery_hours_mean=float(np.mean(recovered)) if recovered else float("nan"),
        recovery_hours_max=float(np.max(recovered)) if recovered else float("nan"),
        recovered_deploys=len(recovered), censored_deploys=len(censored),
        censored_hours_mean=float(np.mean(censored)) if censored else float("nan"),
        worst_dip=float(max(dips)) if dips else float("nan"), dip_mean=float(np.mean(dips)) if dips else float("nan"),
        negative_flips=int(sum(d["negative_flips"] for d in deploys)),
        negative_flips_max_per_deploy=int(max((d["negative_flips"] for d in deploys), default=0)),
        per_deploy=deploys,
    )
    if evaluated.empty:
        out.update(quality_time_area=float("nan"), best_area=float("nan"), regret_area=float("nan"))
        return out
    times = evaluated.time_hours.to_numpy()
    out["quality_time_area"] = _area(times, evaluated.r1_all.to_numpy(), horizon)
    best = evaluated.r1_best.to_numpy(dtype=float) if "r1_best" in evaluated else np.full(len(times), np.nan)
    out["best_area"] = _area(times, best, horizon) if not np.isnan(best).any() else float("nan")
    out["regret_area"] = out["best_area"] - out["quality_time_area"]
    return out


def _serving_summary(frame: pd.DataFrame, *, horizon: float, queries_per_hour: float | None) -> dict:
    """The serving accelerators' time-weighted and peak utilisation, the hours traffic exceeded their capacity (with a
    warning), the peak memory and the last search cost, from the rows (each row's state holds until the next row)."""
    out = {"serve_utilization_mean": float("nan"), "serve_utilization_peak": float("nan"), "serve_over_capacity_hours": 0.0,
           "memory_bytes_peak": float("nan"), "memory_tb_hours_used": float("nan"), "memory_tb_hours_provisioned": float("nan"),
           "gallery_bytes_horizon": float("nan"), "search_flops_per_query_horizon": float("nan"), "warnings": []}
    if "serve_utilization" not in frame:
        return out
    rows = frame[frame.serve_utilization.notna()]
    if rows.empty:
        return out
    times = rows.time_hours.to_numpy()
    spans = np.diff(np.append(times, max(horizon, times[-1])))
    use = rows.serve_utilization.to_numpy()
    total = spans.sum()
    over = float(spans[use > 1].sum())
    memory = rows.memory_bytes.to_numpy(float)
    out.update(
        serve_utilization_mean=float(np.sum(use * spans) / total) if total > 0 else float(use[-1]),
        serve_utilization_peak=float(use.max()), serve_over_capacity_hours=over,
        memory_bytes_peak=float(memory.max()), gallery_bytes_horizon=float(rows.gallery_bytes.iloc[-1]),
        memory_tb_hours_used=float(np.sum(memory * spans)) / 1e12, memory_tb_hours_provisioned=float(memory.max() * total) / 1e12,
        search_flops_per_query_horizon=float(rows.search_flops_per_query.iloc[-1]),
    )
    if use.max() > 1:
        traffic = f"{queries_per_hour / 3600:,.1f} queries/s" if queries_per_hour is not None else "the traffic"
        out["warnings"].append(
            f"{traffic} exceeds the serving capacity (accelerators.serve) for {over:,.1f} h, at peak {use.max():.2f}x the capacity: "
            "add serving accelerators, or a cheaper index"
        )
    return out
