"""The engine: the only place that knows the order of things.

scenario -> stream -> (per session) train -> deploy -> index -> replay -> backfill ->
evaluate -> write. Events sit on a queue ordered by the simulated clock; each handler
is a short method that takes what it needs and returns an `Outcome`. Hooks see every
event before and after it is handled; writing files and showing progress are hooks.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from cvstream.errors import UserError
from cvstream.gallery import Gallery, ReplayBuffer
from cvstream.gallery.backfill import fit_transform, order_items, plan_backfill, stale_items, transform_pairs
from cvstream.models import build_method, build_model
from cvstream.models.methods.base import TrainContext
from cvstream.models.trainer import embed, train_session
from cvstream.sessions import scenario_stream
from cvstream.sessions.streams import validation_split
from cvstream.sessions.rng import numpy_rng, torch_generator, torch_seed
from cvstream.simulator import events as ev
from cvstream.simulator.evaluate import AnytimeHook, Evaluator
from cvstream.simulator.curve import backfill_curve
from cvstream.simulator.hooks import Hook, Recorder
from cvstream.simulator.lock import RunLock
from cvstream.simulator import checkpoint, memory
from cvstream.simulator.run import RunResult, new_run_dir, resumable_run


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for, but no CUDA device is available (use device: auto or cpu)")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


class Simulator:
    """Replays one scenario. `Simulator(scenario).run()` returns a `RunResult`."""

    def __init__(
        self,
        scenario,
        *,
        out_dir: str | Path | None = None,
        data_root: str | Path | None = None,
        cache_dir: str | Path | None = None,
        hooks: tuple[Hook, ...] | list[Hook] = (),
        progress: bool = False,
        write: bool = True,
        resume: bool = False,
        shard=None,
    ):
        from cvstream.simulator.outputs_hook import ParquetWriter
        from cvstream.simulator.progress import ProgressHook

        self.scenario = scenario
        self.device = resolve_device(scenario.device)
        self.source, self.label_set, self.stream = scenario_stream(scenario, data_root=data_root, cache_dir=cache_dir)
        self.resuming = resume
        self.shard = shard  # a cvstream.models.distributed.Shard: this process trains its slice of each batch (DDP)
        if resume:  # continue the run in out_dir after its last completed session
            self.run_dir, self._resumed_info = Path(out_dir), resumable_run(out_dir)
            self.run_id = self._resumed_info["run_id"]
        else:
            self.run_dir, self.run_id = new_run_dir(scenario, out_dir) if write else (None, "in-memory")
        self.recorder = Recorder()
        self.hooks: list[Hook] = [self.recorder]
        if write:
            self.hooks.append(ParquetWriter())
        if progress:
            self.hooks.append(ProgressHook())
        self.hooks.extend(hooks)
        self.method = build_method(scenario)
        self.evaluator = Evaluator(scenario=scenario, stream=self.stream, labels=self.label_set.labels)
        if scenario.evaluation.every_steps:
            self.hooks.append(AnytimeHook(scenario.evaluation.every_steps))
        self.started_at: datetime | None = None
        self.status = "created"

    # -- the loop --------------------------------------------------------------------------

    @classmethod
    def resume(cls, run_dir: str | Path, **kwargs) -> "Simulator":
        """A simulator that continues the run in `run_dir` with the scenario it was started with."""
        from cvstream.scenario import Scenario

        info = resumable_run(run_dir)
        return cls(Scenario.from_dict(info["scenario"], source=str(Path(run_dir) / "run.json")), out_dir=run_dir, resume=True, **kwargs)

    def run(self) -> RunResult:
        self._setup()
        self.status = "running"
        self._lock = RunLock(self.run_dir) if self.run_dir is not None else None
        if self._lock is not None:
            self._lock.acquire()  # before any file is written: one writer per run folder
        first = 0
        if self.resuming:  # under the lock: no other process writes the files read here
            try:
                first = checkpoint.restore(self)
            except BaseException:
                self._lock.release()
                raise
            self.started_at = datetime.fromisoformat(self._resumed_info["started_at"])
        try:
            for hook in self.hooks:
                hook.before_run(self)
        except BaseException:
            self._finish("failed")
            raise
        queue: list = []
        counter = itertools.count()

        def schedule(event: ev.Event) -> None:
            heapq.heappush(queue, (event.time, next(counter), event))

        self._schedule = schedule
        if first < len(self.stream):
            schedule(ev.SessionStart(first))
        try:
            while queue:
                _, _, event = heapq.heappop(queue)
                for hook in self.hooks:
                    hook.before_event(self, event)
                started = datetime.now(timezone.utc)
                clock = time.perf_counter()
                outcome = self._handlers[event.kind](event)
                outcome.seconds = outcome.seconds or time.perf_counter() - clock
                outcome.detail = {**(outcome.detail or {}), "started_at": started.isoformat()}
                for hook in self.hooks:
                    hook.after_event(self, event, outcome)
        except KeyboardInterrupt:
            self._finish("interrupted")
            raise
        except BaseException:
            self._finish("failed")
            raise
        self._finish("completed")
        return self.result()

    def _finish(self, status: str) -> None:
        self.status = status
        try:
            for hook in self.hooks:
                hook.after_run(self, status)
        finally:
            if getattr(self, "_lock", None) is not None:
                self._lock.release()

    def result(self) -> RunResult:
        return self.recorder.result(self)

    # -- state ---------------------------------------------------------------------------

    def _setup(self) -> None:
        self.started_at = datetime.now(timezone.utc)
        s = self.scenario
        images = np.array(self.source.images())  # a writable copy: the source may be a read-only memory map
        self.images = torch.from_numpy(images).to(self.device)
        self.model = build_model(s, in_channels=images.shape[1], input_ndim=images.ndim).to(self.device)
        self.previous_model: torch.nn.Module | None = None
        self.generation = -1  # no generation deployed yet
        self.gallery = Gallery(s.model.embedding_dim, s.gallery, seed=s.seed)
        if len(self.stream):
            self.gallery.require_trainable(len(self.stream[0].gallery_ids))  # fail before training, not after
        curve = s.backfill.curve_session
        if curve is not None and curve >= len(self.stream):
            raise UserError(f"backfill.curve_session = {curve}, but the stream has {len(self.stream)} sessions (0..{len(self.stream) - 1})")
        self.backfill_curve = None  # a DataFrame once the backfill curve was measured
        self._uncertainty: dict[int, float] | None = None  # psi's predicted error per mapped item, this session
        self.replay = ReplayBuffer(s.replay.size, s.replay.selection)
        self.train_generator = torch_generator(s.seed, "batching")
        self.replay_rng = numpy_rng(s.seed, "replay")
        augment = s.training.augment
        self.augment = self.source.augment_by_default if augment is None else augment
        self._fresh: tuple[np.ndarray, np.ndarray] | None = None
        self._handlers = {
            "session_start": self._session_start,
            "train": self._train,
            "deploy": self._deploy,
            "index": self._index,
            "replay": self._update_replay,
            "transform": self._transform,
            "backfill": self._backfill,
            "evaluate": self._evaluate,
            "session_end": self._session_end,
        }

    def labels_of(self, sample_ids: np.ndarray) -> np.ndarray:
        return self.label_set.labels[sample_ids]

    # -- handlers ------------------------------------------------------------------------

    def _session_start(self, event: ev.SessionStart) -> ev.Outcome:
        t = event.session
        memory.reset_peak()  # session_end then reports this session's own peak
        for phase in (ev.Train, ev.Deploy, ev.Index, ev.UpdateReplay, ev.Transform, ev.Backfill, ev.Evaluate, ev.SessionEnd):
            self._schedule(phase(t))
        session = self.stream[t]
        return ev.Outcome(
            generation=self.generation,
            detail={"new_classes": len(session.new_classes), "train_samples": len(session.train_ids), "queries": len(session.query_ids)},
        )

    def _train(self, event: ev.Train) -> ev.Outcome:
        t = event.session
        s = self.scenario
        session = self.stream[t]
        needs = self.method.needs
        replay_ids = self.replay.sample_ids() if "replay" in needs else np.empty(0, np.int64)
        seen_ids = np.unique(np.concatenate([self.stream[i].train_ids for i in range(t + 1)])) if "seen_data" in needs else None
        val_ids = self._split_validation(session.train_ids, t)
        ids = self.method.training_ids(session_ids=session.train_ids, replay_ids=replay_ids, seen_ids=seen_ids)
        ids = ids[~np.isin(ids, val_ids)]
        classes = self.labels_of(ids)
        keep_previous = bool(needs & {"previous_model", "previous_embeddings"}) and self.generation >= 0
        # The previous generation, frozen before the classifier grows: only it and the current model live.
        self.previous_model = None
        self.previous_model = copy.deepcopy(self.model).eval().requires_grad_(False) if keep_previous else None
        self.model.add_classes(
            np.concatenate([session.new_classes, np.unique(classes)]), torch_generator(s.seed, "classifier_rows", t)
        )
        context = TrainContext(session=t)
        extra_forwards = 0
        if self.previous_model is not None:
            context.previous_embed = self.previous_model
            previous_classes = self.previous_model.class_ids
            known = torch.isin(self.model.class_ids, previous_classes)
            weight = torch.zeros_like(self.model.weight.detach())
            previous_rows = self.previous_model.rows_of(self.model.class_ids[known])
            weight[known] = torch.nn.functional.normalize(self.previous_model.weight.detach()[previous_rows], dim=1)
            context.previous_weight, context.previous_known = weight, known
        if "previous_embeddings" in needs and self.previous_model is not None:
            old = embed(self.previous_model, self.images, ids, batch_size=s.training.eval_batch_size, amp=s.training.amp)
            context.previous_embeddings = torch.from_numpy(old).to(self.device)
            context.training_rows = self.model.rows_of(torch.as_tensor(classes, device=self.model.class_ids.device))
            extra_forwards += len(ids)
        if "class_means" in needs and len(self.gallery):
            rows_classes = self.model.class_ids.cpu().numpy()
            means, has = self.gallery.class_means(rows_classes)
            # L_d covers every class with stored vectors from an earlier session (CVS's Pi and Gamma sets): on
            # blurry and general streams that includes classes whose home session is now or later.
            context.class_means = torch.from_numpy(means).to(self.device)
            context.old_rows = torch.from_numpy(has).to(self.device)
        validate, validate_forwards = self._validator(val_ids, t) if len(val_ids) else (None, 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed(s.seed, "train", t))  # anything that still reads the global RNG
            stats = train_session(
                model=self.model,
                method=self.method,
                images=self.images,
                sample_ids=ids,
                class_ids=classes,
                context=context,
                spec=s.training,
                generator=self.train_generator,
                augment_images=self.augment,
                flip=self.source.flip_ok,
                on_step=lambda step, total, terms: [h.on_train_step(self, step, total, terms) for h in self.hooks],
                validate=validate,
                shard=self.shard,
            )
        extra_forwards += validate_forwards * len(stats.validation)
        trained = stats.steps > 0 or self.generation < 0
        self._next_generation = t if trained else self.generation
        return ev.Outcome(
            generation=self._next_generation,
            seconds=stats.seconds,
            backbone_forwards=stats.backbone_forwards + extra_forwards,
            items=stats.samples,
            cost_phase="train",
            detail={
                "steps": stats.steps, "training_samples": int(len(ids)), "replay_samples": int(len(replay_ids)), "loss": stats.last_terms,
                "validation_r1": stats.validation, "best_epoch": stats.best_epoch, "term_samples": stats.term_samples,
            },
        )

    def _split_validation(self, arrivals: np.ndarray, t: int) -> np.ndarray:
        """The validation queries come from the session's arrivals only; replay exemplars are already gallery items."""
        fraction = self.scenario.training.validation_fraction
        return validation_split(arrivals, self.labels_of(arrivals), fraction=fraction, seed=self.scenario.seed, session=t)

    def _validator(self, val_ids: np.ndarray, session: int):
        """(validate, backbone forwards per call): R@1 of the validation queries against the mixed gallery as it would be after this session's index step,
        without the validation samples themselves: a query never matches itself."""
        s = self.scenario
        items = np.flatnonzero(~np.isin(self.gallery.sample_ids_of(np.arange(len(self.gallery))), val_ids))
        stored = self.gallery.vectors(items)
        stored_classes = self.gallery.class_of(items.astype(np.int64))
        fresh_ids = np.setdiff1d(self.stream[session].gallery_ids, val_ids)

        def validate(model: torch.nn.Module) -> float:
            fresh = embed(model, self.images, fresh_ids, batch_size=s.training.eval_batch_size, amp=s.training.amp)
            queries = embed(model, self.images, val_ids, batch_size=s.training.eval_batch_size, amp=s.training.amp)
            gallery = np.vstack([stored, fresh]) if len(stored) else fresh
            gallery_classes = np.concatenate([stored_classes, self.labels_of(fresh_ids)])
            nearest = np.argmax(queries @ gallery.T, axis=1)
            return float(np.mean(gallery_classes[nearest] == self.labels_of(val_ids)))

        return validate, len(fresh_ids) + len(val_ids)

    def _deploy(self, event: ev.Deploy) -> ev.Outcome:
        previous = self.generation
        self.generation = self._next_generation
        if not ("previous_model" in self.method.needs):
            self.previous_model = None
        # The probe set is embedded by every new generation now; its cost is billed to this session's evaluation.
        self.evaluator.deploy(model=self.model, images=self.images, generation=self.generation)
        return ev.Outcome(generation=self.generation, detail={"replaced": previous})

    def _index(self, event: ev.Index) -> ev.Outcome:
        session = self.stream[event.session]
        s = self.scenario
        clock = time.perf_counter()
        ids = session.gallery_ids
        vectors = embed(self.model, self.images, ids, batch_size=s.training.eval_batch_size, amp=s.training.amp)
        self.gallery.add(vectors, sample_ids=ids, class_ids=self.labels_of(ids), session=event.session, generation=self.generation)
        self._fresh = (ids, vectors)
        return ev.Outcome(
            generation=self.generation, seconds=time.perf_counter() - clock, backbone_forwards=len(ids), items=len(ids),
            cost_phase="index", detail={"gallery_size": len(self.gallery)},
        )

    def _update_replay(self, event: ev.UpdateReplay) -> ev.Outcome:
        """Rebalance the buffer; herding runs on the deployed generation's embeddings of the arrivals (the index
        step's) and of the exemplars already held (re-embedded here, as the CVS code does, billed to `replay`)."""
        session = self.stream[event.session]
        if "replay" not in self.method.needs or self.replay.size == 0:
            return ev.Outcome(generation=self.generation, detail={"buffer": 0})
        clock = time.perf_counter()
        gallery_ids, vectors = self._fresh
        train_mask = np.isin(gallery_ids, session.train_ids)
        ids, vecs = gallery_ids[train_mask], vectors[train_mask]
        unindexed = np.setdiff1d(session.train_ids, gallery_ids)  # arrivals that are training-only, if any
        exemplars = self.replay.class_samples() if self.replay.selection == "herding" else {}
        to_embed = np.concatenate([unindexed, *exemplars.values()]).astype(np.int64)
        embedded = self._embed(to_embed) if len(to_embed) else np.empty((0, vectors.shape[1]), np.float32)
        ids, vecs = np.concatenate([ids, unindexed]), np.vstack([vecs, embedded[: len(unindexed)]])
        labels = self.labels_of(ids)
        arrivals = {int(c): (ids[labels == c], vecs[labels == c]) for c in np.unique(labels)}
        current, at = None, len(unindexed)
        if exemplars:
            current = {}
            for c, held in exemplars.items():
                current[c], at = embedded[at : at + len(held)], at + len(held)
        seen = len(set(self.replay.per_class()) | set(arrivals))
        self.replay.update(arrivals, classes_seen=seen, rng=self.replay_rng, current=current)
        return ev.Outcome(
            generation=self.generation, seconds=time.perf_counter() - clock, backbone_forwards=len(to_embed),
            items=len(to_embed), cost_phase="replay", detail={"buffer": len(self.replay), "classes": seen},
        )

    def _transform(self, event: ev.Transform) -> ev.Outcome:
        """FCT: learn psi (stored -> current generation) on items embedded by both, map the other stale items."""
        spec, t = self.scenario.backfill, event.session
        self._uncertainty = None
        stale = stale_items(self.gallery, self.generation) if spec.policy == "transform" else np.empty(0, np.int64)
        if len(stale) == 0:
            return ev.Outcome(generation=self.generation, detail={"policy": spec.policy, "mapped": 0})
        clock = time.perf_counter()
        rng = numpy_rng(self.scenario.seed, "transform", t)
        replay_items = np.flatnonzero(np.isin(self.gallery.sample_ids_of(stale), self.replay.sample_ids()))
        pairs = transform_pairs(stale, preferred=stale[replay_items], count=spec.train_items, rng=rng)
        old = self.gallery.vectors(pairs)
        new = self._embed(self.gallery.sample_ids_of(pairs))
        # A fifth of the pairs is held out to measure psi; every pair keeps its true new vector.
        held = np.zeros(len(pairs), dtype=bool)
        held[rng.permutation(len(pairs))[: len(pairs) // 5]] = True
        fitted = fit_transform(
            old[~held], new[~held], hidden=spec.hidden, epochs=spec.epochs, lr=spec.lr,
            generator=torch_generator(self.scenario.seed, "transform", t), device=self.device,
        )
        self.gallery.replace(pairs, new, session=t, generation=self.generation)
        rest = np.setdiff1d(stale, pairs)
        applying = time.perf_counter()
        mapped, variance = fitted.apply(self.gallery.vectors(rest))
        self.gallery.replace(rest, mapped, session=t, transformed=True)
        self._uncertainty = dict(zip(rest.tolist(), variance.tolist()))
        detail = {
            "policy": "transform", "pairs": int(len(pairs)), "mapped": int(len(rest)), "psi_train_seconds": fitted.seconds,
            "apply_seconds": time.perf_counter() - applying,  # what grows with the gallery; the rest is a fixed cost per update
        }
        if held.any():
            check, _ = fitted.apply(old[held])
            detail["heldout_error_identity"] = float(((old[held] - new[held]) ** 2).sum(1).mean())
            detail["heldout_error_psi"] = float(((check - new[held]) ** 2).sum(1).mean())
        return ev.Outcome(
            generation=self.generation, seconds=time.perf_counter() - clock, backbone_forwards=len(pairs),
            transform_forwards=fitted.forwards + len(rest) + int(held.sum()), items=len(rest), cost_phase="transform", detail=detail,
        )

    def _backfill(self, event: ev.Backfill) -> ev.Outcome:
        """Re-embed the items the policy chooses with the deployed generation (`none`: nothing changes)."""
        spec, t = self.scenario.backfill, event.session
        detail: dict = {"policy": spec.policy}
        if spec.curve_session == t:
            clock = time.perf_counter()
            self.backfill_curve, forwards = self._measure_curve(t)
            detail["curve_seconds"] = float(self.backfill_curve.attrs["seconds"])
            self.evaluator.bill(forwards, time.perf_counter() - clock)  # a measurement, not backfill work
        clock = time.perf_counter()
        chosen = plan_backfill(
            spec, gallery=self.gallery, generation=self.generation, rng=numpy_rng(self.scenario.seed, "backfill", t),
            uncertainty=self._uncertainty,
        )
        if len(chosen):
            self.gallery.replace(chosen, self._embed(self.gallery.sample_ids_of(chosen)), session=t, generation=self.generation)
        detail.update(backfilled=int(len(chosen)), stale_after=int(len(stale_items(self.gallery, self.generation))))
        return ev.Outcome(
            generation=self.generation, seconds=time.perf_counter() - clock, backbone_forwards=len(chosen), items=len(chosen),
            cost_phase="backfill", detail=detail,
        )

    def _embed(self, sample_ids: np.ndarray) -> np.ndarray:
        s = self.scenario
        return embed(self.model, self.images, sample_ids, batch_size=s.training.eval_batch_size, amp=s.training.amp)

    def _measure_curve(self, t: int):
        """FastFill's backfill curve at session t, on copies (the gallery itself is untouched), and its backbone forwards."""
        s = self.scenario
        session = self.stream[t]
        order = order_items(
            s.backfill.curve_order, stale_items(self.gallery, self.generation), gallery=self.gallery,
            rng=numpy_rng(s.seed, "backfill-curve", t), uncertainty=self._uncertainty,
        )
        query_classes = self.labels_of(session.query_ids)
        home = self.stream.home_of(query_classes)
        curve = backfill_curve(
            gallery=self.gallery, order=order, new_vectors=self._embed(self.gallery.sample_ids_of(order)),
            queries=self._embed(session.query_ids), query_classes=query_classes,
            subsets={"old": home < t, "new": home == t, "all": np.ones(len(home), dtype=bool)},
            steps=s.backfill.curve_steps, session=t, order_name=s.backfill.curve_order,
        )
        return curve, len(order) + len(session.query_ids)

    def _evaluate(self, event: ev.Evaluate) -> ev.Outcome:
        done = self.evaluator.evaluate(
            session=event.session, model=self.model, images=self.images, gallery=self.gallery, generation=self.generation
        )
        self.last_evaluation = done  # the vectors it searched, for output.save_embeddings
        return ev.Outcome(
            generation=self.generation, seconds=done.seconds, backbone_forwards=done.backbone_forwards,
            items=len(self.stream[event.session].query_ids), cost_phase="evaluate", metrics=done.rows,
        )

    def _session_end(self, event: ev.SessionEnd) -> ev.Outcome:
        if event.session + 1 < len(self.stream):
            self._schedule(ev.SessionStart(event.session + 1))
        self._fresh = None
        # Memory figures per session: a long stream shows here whether anything but the gallery grows.
        detail = {"gallery_size": len(self.gallery), "replay": len(self.replay), **memory.snapshot(self.gallery)}
        return ev.Outcome(generation=self.generation, detail=detail)
