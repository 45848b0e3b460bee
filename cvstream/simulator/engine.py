"""The engine: one session is one method, `Simulator.run_session`, that reads top to bottom.

train -> deploy -> index -> replay -> transform -> backfill -> evaluate -> write. Each step
takes what it needs, changes the run state it owns (the model, the gallery, the buffer) and
returns what a later step needs, with an `Outcome` (its cost and details) for the tables.
What a run carries from one session to the next is a `RunState`; the checkpoint saves exactly
that. Hooks see named moments (after training, deploy, evaluation, the session) with that step's
result and may add metric rows; writing files and the progress bar are hooks, checkpointing is the
engine's. `run_session` returns a `SessionResult`, which a driver above the engine (the service
timeline) reads; `Simulator.run` is the plain driver: every session in order.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from cvstream.errors import ScenarioError, UserError
from cvstream.evaluation.curve import backfill_curve
from cvstream.evaluation.evaluator import AnytimePoint, Evaluator, Probed
from cvstream.evaluation.retrieval import home_subsets, top_classes
from cvstream.evaluation.rows import MetricRow, hook_row
from cvstream.gallery import Gallery, ReplayBuffer
from cvstream.gallery.backfill import BACKFILL_POLICIES, fit_transform, order_items, plan_backfill, stale_items, transform_pairs
from cvstream.gallery.replay import REPLAY_SELECTIONS
from cvstream.models import build_method, build_model, upgraded_model
from cvstream.models.augment import channel_stats
from cvstream.models.methods.base import TrainContext
from cvstream.models.trainer import embed, train_session
from cvstream.sessions import scenario_stream
from cvstream.sessions.rng import numpy_rng, torch_generator, torch_seed
from cvstream.simulator import checkpoint, memory
from cvstream.simulator.checkpoint import model_weights, restored_model
from cvstream.simulator.generation_store import GenerationStore, StoredTraining, code_digest, digest, gallery_digest, module_digest
from cvstream.simulator.events import Event, Outcome, SessionResult
from cvstream.simulator.generations import Generation, frozen, save_generation
from cvstream.simulator.hooks import Hook
from cvstream.simulator.lock import RunLock
from cvstream.simulator.run import RunResult, new_run_dir, resumable_run
from cvstream.simulator.state import RunState
from cvstream.simulator.tables import Tables

if TYPE_CHECKING:
    import pandas as pd


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for, but no CUDA device is available (use device: auto or cpu)")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def preflight(scenario, stream, method) -> None:
    """What can be known wrong before any training (`cvstream validate` and every run ask the same)."""
    selection = scenario.replay.selection
    if scenario.model.upgrades and "replay" in method.needs and scenario.replay.size and not REPLAY_SELECTIONS.get(selection).embeds:
        raise ScenarioError(
            f"replay selection {selection!r} keeps each exemplar's embedding as first stored, so its buffer would mix the "
            "dimensions of model.upgrades; use a selection that re-embeds the buffer every session (herding), or replay.size: 0",
            source=scenario.source, key_path="replay.selection",
        )
    if len(stream):  # can the gallery index hold the first session's items?
        Gallery(scenario.model.embedding_dim, scenario.gallery, seed=scenario.seed).require_trainable(len(stream[0].gallery_ids))
    curve = scenario.backfill.curve_session
    if curve is not None and curve >= len(stream):
        raise UserError(f"backfill.curve_session = {curve}, but the stream has {len(stream)} sessions (0..{len(stream) - 1})")
    for session, spec in sorted(scenario.model.upgrades.items()):  # SPEC section 12: its vectors open segments of their own
        if session >= len(stream):
            raise UserError(f"model.upgrades: session {session}, but the stream has {len(stream)} sessions (0..{len(stream) - 1})")
        Gallery(spec.embedding_dim, scenario.gallery, seed=scenario.seed).require_trainable(len(stream[session].gallery_ids), session=session)


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
        store=None,
    ):
        from cvstream.simulator.outputs_hook import ParquetWriter
        from cvstream.simulator.progress import ProgressHook

        self.scenario = scenario
        self.resuming = resume
        if resume:  # continue the run in out_dir after its last completed session (a finished run stops here)
            self.run_dir, self._resumed_info = Path(out_dir), resumable_run(out_dir)
            self.run_id = self._resumed_info["run_id"]
        self.device = resolve_device(scenario.device)
        self.source, self.label_set, self.stream = scenario_stream(scenario, data_root=data_root, cache_dir=cache_dir)
        self.shard = shard  # a cvstream.models.distributed.Shard: this process trains its slice of each batch (DDP)
        if not resume:
            self.run_dir, self.run_id = new_run_dir(scenario, out_dir) if write else (None, "in-memory")
        self.tables = Tables()
        self.hooks: list[Hook] = []
        if write:
            self.hooks.append(ParquetWriter())
            if scenario.output.trackers:  # TensorBoard / MLflow, from the rows the writer saves
                from cvstream.simulator.trackers import TrackerHook

                self.hooks.append(TrackerHook(scenario.output.trackers))
        if progress:
            self.hooks.append(ProgressHook())
        self.hooks.extend(hooks)
        self.method = build_method(scenario)
        # The generation store (SPEC section 13): a `GenerationStore` or its folder; None: every session trains.
        self.store = GenerationStore(store) if isinstance(store, (str, Path)) else store
        if self.store is not None and shard is not None:
            raise UserError("the generation store is for single-process runs: a distributed run trains every session")
        self.state: RunState | None = None
        self._root_key: str | None = None  # the generation store's digest of what every session's key shares
        self._flops_by_generation: dict[int, int] = {}  # backbone_flops, counted once per generation
        # A driver above the engine that replays generations (the service timeline) reads them from the SessionResults,
        # and a resumed run from generations/.
        self.keeps_generations = scenario.timeline is not None
        self.started_at: datetime | None = None
        self.status = "created"

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Every session from `state.next_session` on, in order. A scenario with a `timeline` section is driven by the
        service timeline instead: `cvstream.timeline.run(sim)`."""
        if self.scenario.timeline is not None:
            raise UserError(f"{self.scenario.source}: the scenario has a timeline section; run it with cvstream.timeline.run(simulator) "
                            "(as `cvstream run` does), which drives the sessions from the service timeline")
        with self.running():
            for t in range(self.state.next_session, len(self.stream)):
                self.run_session(t)
        return self.result()

    @contextlib.contextmanager
    def running(self):
        """Everything around the sessions: prepare, lock the run folder, restore a resumed run, the hooks' start
        and end, the run's status. Inside it, `run_session(t)` for t from `state.next_session` on (the service
        timeline drives them one at a time from its own clock). Yields a dict that the driver fills with what run.json
        records of the run beyond the engine's own fields (the timeline's summary), written as the run completes."""
        self._prepare()
        self.status = "running"
        self._lock = RunLock(self.run_dir) if self.run_dir is not None else None
        if self._lock is not None:
            self._lock.acquire()  # before any file is written: one writer per run folder
        if self.resuming:  # under the lock: no other process writes the files read here
            try:
                rows = checkpoint.restore(self.state, self.run_dir)
            except BaseException:
                self._lock.release()
                raise
            self.tables.restore(rows)
            self.started_at = datetime.fromisoformat(self._resumed_info["started_at"])
        try:
            for hook in self.hooks:
                hook.before_run(self)
        except BaseException:
            self._finish("failed")
            raise
        record: dict = {}
        try:
            yield record
        except KeyboardInterrupt:
            self._finish("interrupted")
            raise
        except BaseException:
            self._finish("failed")
            raise
        self._finish("completed" if self.state.next_session >= len(self.stream) else "stopped", record=record)

    def run_session(self, t: int) -> SessionResult:
        """One session, in the one order there is; returns what it deployed, cost and measured."""
        memory.reset_peak()  # session_end then reports this session's own peak
        cpu_clock = time.process_time()  # and the CPU seconds the session took, all threads of the process
        step = self._step
        self._each_hook(t, lambda hook: hook.before_session(self, t))
        step(t, "session_start", self.start)
        trained, (generation, anytime) = step(t, "train", self.train)
        self._each_hook(t, lambda hook: hook.after_training(self, trained))
        deployed, probed = step(t, "deploy", self.deploy, generation)
        self._each_hook(t, lambda hook: hook.after_deploy(self, deployed))
        _, fresh = step(t, "index", self.index)
        step(t, "replay", self.update_replay, fresh)
        _, uncertainty = step(t, "transform", self.transform)
        backfilled, curve_cost = step(t, "backfill", self.backfill, uncertainty)
        evaluated, _ = step(t, "evaluate", self.evaluate, probed, anytime, curve_cost)
        self._each_hook(t, lambda hook: hook.after_evaluation(self, evaluated))
        step(t, "session_end", self.end, cpu_clock)
        before = self.tables.committed
        self.tables.commit()
        self.state.next_session = t + 1
        costs, metrics = (tuple(dict(row) for row in self.tables.rows[name][before[name] : self.tables.committed[name]])
                          for name in ("costs", "metrics"))
        result = SessionResult(session=t, generation=generation, costs=costs, metrics=metrics,
                               artifacts={**backfilled.artifacts, **evaluated.artifacts})
        for hook in self.hooks:
            hook.after_session(self, result)  # the writer saves the session's files here
        if self.keeps_generations:
            result = self._keep_generation(result)
        if self.run_dir is not None:  # after the tables are on disk: the checkpoint's row counts never exceed them
            checkpoint.save(self.state, self.run_dir, rows=self.tables.committed)
        return result

    def _keep_generation(self, result: SessionResult) -> SessionResult:
        """The result with a frozen copy of its generation, also saved (before the checkpoint) for a resumed run to replay."""
        model = frozen(self.state.model)
        if self.run_dir is not None:
            train = result.cost("train")
            save_generation(self.run_dir, Generation(result.session, result.generation, model, int(train["items"]),
                                                     int(train["backbone_forwards"])))
        return dataclasses.replace(result, model=model)

    def _step(self, t: int, kind: str, action: Callable, *args) -> tuple[Outcome, object]:
        """Run one step: its wall time, its event row; returns its outcome and what the step returns."""
        event = Event(session=t, kind=kind)
        started = datetime.now(timezone.utc)
        clock = time.perf_counter()
        outcome, value = action(t, *args)
        if outcome.seconds is None:  # a step that timed its own work says so; others take their wall time
            outcome.seconds = time.perf_counter() - clock
        if outcome.cost_phase:  # FLOPs per image of the generation that did the work
            outcome.backbone_flops = self.backbone_flops(outcome.generation)
        self.tables.add_event(self.run_id, event, outcome, started_at=started.isoformat())
        return outcome, value

    def _each_hook(self, t: int, moment: Callable[[Hook], list[dict] | None]) -> None:
        """Call one moment of every hook, in order; the metric rows it returns join session t's."""
        for hook in self.hooks:
            self.record_metrics(moment(hook), session=t)

    def backbone_flops(self, generation: int, model: torch.nn.Module | None = None) -> int:
        """FLOPs per image of `generation`'s network (`model`; default: the current one, which a step's generation is),
        counted once per generation for the costs and the timeline alike."""
        if generation not in self._flops_by_generation:
            from cvstream.models.flops import forward_flops

            network = self.state.model if model is None else model
            self._flops_by_generation[generation] = forward_flops(network, tuple(self.images.shape[1:]))
        return self._flops_by_generation[generation]

    def record_metrics(self, rows: list[dict] | None, *, session: int) -> None:
        """Add metric rows that a hook returned from a moment (dicts with `metric`, `value`, and optionally the other
        columns of metrics.parquet: `hook_row`) to the session's table."""
        for row in rows or []:
            self.tables.add_metric(self.run_id, hook_row(row, session=session, query_generation=self.generation))

    def _finish(self, status: str, *, record: dict | None = None) -> None:
        self.status = status
        record = dict(record or {})
        try:
            for hook in self.hooks:
                hook.after_run(self, status, record)
        finally:
            if getattr(self, "_lock", None) is not None:
                self._lock.release()

    def result(self, *, timeline: pd.DataFrame | None = None, timeline_summary: dict | None = None) -> RunResult:
        """The run's tables; a driver above adds its own (the service timeline's frame and summary)."""
        return RunResult(
            run_dir=self.run_dir, run_id=self.run_id, status=self.status,
            metrics=self.tables.frame("metrics"), costs=self.tables.frame("costs"), events=self.tables.frame("events"),
            stream=self.stream.to_frame(), gallery=self.gallery.metadata(), timeline=timeline, timeline_summary=timeline_summary,
        )

    # -- the state, and read-only views of it for hooks ----------------------------------------

    def _prepare(self) -> None:
        self.started_at = datetime.now(timezone.utc)
        s = self.scenario
        preflight(s, self.stream, self.method)  # fail before any work, not after
        images = np.array(self.source.images())  # a writable copy: the source may be a read-only memory map
        self.images = torch.from_numpy(images).to(self.device)
        augment = s.training.augment
        self.augment = self.source.augment_by_default if augment is None else augment
        stats = None
        if s.training.input_scaling == "mean-std" and images.ndim == 4:
            stats = self.source.pixel_stats or channel_stats(images)
        self.state = RunState(
            model=build_model(s, in_channels=images.shape[1], input_ndim=images.ndim, input_stats=stats).to(self.device),
            generation=-1,
            gallery=Gallery(s.model.embedding_dim, s.gallery, seed=s.seed),
            replay=ReplayBuffer(s.replay.size, s.replay.selection),
            evaluator=Evaluator(scenario=s, stream=self.stream, labels=self.label_set.labels),
            train_generator=torch_generator(s.training_seed, "batching"),
            replay_rng=numpy_rng(s.seed, "replay"),
        )

    @property
    def model(self) -> torch.nn.Module:
        return self.state.model

    @property
    def generation(self) -> int:
        return self.state.generation if self.state is not None else -1

    @property
    def gallery(self) -> Gallery:
        return self.state.gallery

    @property
    def replay(self) -> ReplayBuffer:
        return self.state.replay

    @property
    def evaluator(self) -> Evaluator:
        return self.state.evaluator

    def labels_of(self, sample_ids: np.ndarray) -> np.ndarray:
        return self.label_set.labels[sample_ids]

    def embed(self, sample_ids: np.ndarray, model: torch.nn.Module | None = None) -> np.ndarray:
        """Embeddings of `sample_ids` by `model` (default: the current one), counted by the caller."""
        s = self.scenario.training
        return embed(self.model if model is None else model, self.images, sample_ids, batch_size=s.eval_batch_size, amp=s.amp)

    # -- the steps -----------------------------------------------------------------------------

    def start(self, t: int) -> tuple[Outcome, None]:
        session = self.stream[t]
        detail = {"new_classes": len(session.new_classes), "train_samples": len(session.train_ids), "queries": len(session.query_ids)}
        return Outcome(generation=self.generation, detail=detail), None

    def train(self, t: int) -> tuple[Outcome, tuple[int, list[AnytimePoint]]]:
        """Train the model on the session, or take what a stored training of the same key left (the generation store);
        returns the generation the session deploys, and the anytime points measured during training
        (`evaluation.every_steps`), which its evaluation reports."""
        key = self._training_key(t)
        stored = self.store.load(key) if key is not None else None
        if stored is not None:
            outcome, value = self._reuse(t, stored)
        else:
            outcome, value = self._train(t)
            if key is not None:
                self.store.save(key, self._stored(outcome, value))
        self.state.lineage = key or ""
        return outcome, value

    def _training_key(self, t: int) -> str | None:
        """The generation store's key of session t's training (module `generation_store`), or None without a store (or
        where the chain of keys was broken by sessions run without it)."""
        if self.store is None or (t > 0 and not self.state.lineage):
            return None
        s = self.scenario
        reads_gallery = ("class_means" in self.method.needs or bool(s.evaluation.every_steps)
                         or len(self.stream.val_ids(t, seen=s.training.validate_on == "seen")) > 0)
        if self._root_key is None:
            data = s.to_dict(complete=True)
            sections = ["dataset", "stream", "model", "training", "method", "replay", "seed"]
            sections += ["gallery"] if reads_gallery else []
            sections += ["evaluation"] if bool(s.evaluation.every_steps) else []
            frame = self.stream.to_frame()
            threads = torch.get_num_threads() if self.device.type == "cpu" else 0  # the CPU kernels round by thread count
            self._root_key = digest(json.dumps({k: data.get(k) for k in sections}, sort_keys=True, default=str), s.training_seed,
                                    self.device.type, threads, code_digest(), module_digest(self.method),
                                    *(frame[c].to_numpy() for c in frame.columns))
        gallery = gallery_digest(self.state.gallery) if reads_gallery and len(self.state.gallery) else ""
        return digest(self._root_key, self.state.lineage, t, gallery)

    def _reuse(self, t: int, stored: StoredTraining) -> tuple[Outcome, tuple[int, list[AnytimePoint]]]:
        """The training step as the stored one left it: its network, batching generator, outcome and anytime points.
        Billed as it was, marked reused; no training step runs (hooks see none)."""
        state, upgrade = self.state, self.scenario.model.upgrades.get(t)
        if upgrade is not None:
            state.gallery.widen(upgrade.embedding_dim)
        state.model = restored_model(state.model, stored.model_spec, stored.model_state)
        state.train_generator.set_state(stored.train_generator)
        values = dict(stored.outcome)
        outcome = Outcome(generation=stored.generation, seconds=values["seconds"], backbone_forwards=values["backbone_forwards"],
                          items=values["items"], cost_phase="train", reused=True, detail=values["detail"])
        anytime = [AnytimePoint(rows=[MetricRow(**row) for row in point["rows"]], backbone_forwards=point["backbone_forwards"],
                                seconds=point["seconds"], value=point["value"]) for point in stored.anytime]
        return outcome, (stored.generation, anytime)

    def _stored(self, outcome: Outcome, value: tuple[int, list[AnytimePoint]]) -> StoredTraining:
        generation, anytime = value
        model = self.state.model
        return StoredTraining(
            generation=generation, model_spec=model.spec, model_state=model_weights(model),
            train_generator=self.state.train_generator.get_state(),
            outcome={"seconds": outcome.seconds, "backbone_forwards": outcome.backbone_forwards, "items": outcome.items,
                     "detail": outcome.detail},
            anytime=[{"rows": [dataclasses.asdict(row) for row in point.rows], "backbone_forwards": point.backbone_forwards,
                      "seconds": point.seconds, "value": point.value} for point in anytime],
        )

    def _train(self, t: int) -> tuple[Outcome, tuple[int, list[AnytimePoint]]]:
        s, state = self.scenario, self.state
        session = self.stream[t]
        needs = self.method.needs
        replay_ids = state.replay.sample_ids() if "replay" in needs else np.empty(0, np.int64)
        seen_ids = np.unique(np.concatenate([self.stream[i].train_ids for i in range(t + 1)])) if "seen_data" in needs else None
        val_ids = self.stream.val_ids(t, seen=s.training.validate_on == "seen")
        ids = self.method.training_ids(session_ids=session.train_ids, replay_ids=replay_ids, seen_ids=seen_ids)
        classes = self.labels_of(ids)
        keep_previous = bool(needs & {"previous_model", "previous_embeddings"}) and state.generation >= 0
        upgrade = s.model.upgrades.get(t)
        if upgrade is not None:  # SPEC section 12: a network built from scratch, trained against the one it replaces
            old = state.model.eval().requires_grad_(False)
            head = self.method.upgrade_head(old_dim=old.embedding_dim, new_dim=upgrade.embedding_dim)
            state.model = upgraded_model(s, upgrade, previous=old, session=t, head=head)
            state.gallery.widen(upgrade.embedding_dim)
            previous = old if keep_previous else None
        else:  # the previous generation, frozen before the classifier grows: only it and the current model live
            previous = copy.deepcopy(state.model).eval().requires_grad_(False) if keep_previous else None
        state.model.add_classes(
            np.concatenate([session.new_classes, np.unique(classes)]), torch_generator(s.training_seed, "classifier_rows", t),
            init=s.training.classifier_init,
        )
        context, extra_forwards = self._context(t, previous, ids, classes)
        validate, validate_forwards = self._validator(val_ids, t) if len(val_ids) else (None, 0)
        anytime: list[AnytimePoint] = []
        every = s.evaluation.every_steps

        def on_step(step: int, total: int, terms: dict[str, float]) -> None:
            if every and step % every == 0:
                point = state.evaluator.anytime(session=t, step=step, model=state.model, images=self.images, gallery=state.gallery)
                anytime.append(point)
            self._each_hook(t, lambda hook: hook.on_train_step(self, step, total, terms))

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed(s.training_seed, "train", t))  # what still reads the global RNG: layer init, dropout
            stats = train_session(
                model=state.model, method=self.method, images=self.images, sample_ids=ids, class_ids=classes, context=context,
                spec=s.training, generator=state.train_generator, augment_images=self.augment, flip=self.source.flip_ok,
                on_step=on_step,
                validate=validate, shard=self.shard,
            )
        extra_forwards += validate_forwards * len(stats.validation)
        generation = t if stats.steps > 0 or state.generation < 0 else state.generation
        outcome = Outcome(
            generation=generation, seconds=stats.seconds, backbone_forwards=stats.backbone_forwards + extra_forwards,
            items=stats.samples, cost_phase="train",
            detail={
                "steps": stats.steps, "training_samples": int(len(ids)), "replay_samples": int(len(replay_ids)), "loss": stats.last_terms,
                "validation_r1": stats.validation, "best_epoch": stats.best_epoch, "term_samples": stats.term_samples,
            },
        )
        return outcome, (generation, anytime)

    def _context(self, t: int, previous, ids: np.ndarray, classes: np.ndarray) -> tuple[TrainContext, int]:
        """What the method declared it needs from the previous generation and the gallery, and its forwards."""
        needs, model, gallery = self.method.needs, self.state.model, self.state.gallery
        context, forwards = TrainContext(session=t), 0
        if previous is not None:
            context.previous_embed = previous
            if previous.embedding_dim != model.embedding_dim:  # across a model upgrade: old vectors compare through it
                context.old_dim = previous.embedding_dim
            known = torch.isin(model.class_ids, previous.class_ids)
            weight = model.weight.detach().new_zeros((model.num_classes, previous.embedding_dim))
            rows = previous.rows_of(model.class_ids[known])
            weight[known] = torch.nn.functional.normalize(previous.weight.detach()[rows], dim=1)
            context.previous_weight, context.previous_known = weight, known
            if "previous_embeddings" in needs:
                context.previous_embeddings = torch.from_numpy(self.embed(ids, previous)).to(self.device)
                context.training_rows = model.rows_of(torch.as_tensor(classes, device=model.class_ids.device))
                forwards += len(ids)
        if "class_means" in needs and len(gallery):
            # L_d covers every class with stored vectors from an earlier session (CVS's Pi and Gamma sets): on
            # blurry and general streams that includes classes whose home session is now or later.
            means, has = gallery.class_means(model.class_ids.cpu().numpy())  # zero-padded to the widest stored vector
            context.class_means = torch.from_numpy(means[:, : context.old_dim or means.shape[1]]).to(self.device)
            context.old_rows = torch.from_numpy(has).to(self.device)
        return context, forwards

    def _validator(self, val_ids: np.ndarray, t: int):
        """(validate, backbone forwards per call): R@1 of the validation queries against the gallery as it would be
        after this session's index step: the stored items, and the session's fresh items embedded by the model
        under training (validation samples are never gallery items)."""
        fresh_ids = self.stream[t].gallery_ids
        fresh_classes, val_classes = self.labels_of(fresh_ids), self.labels_of(val_ids)

        def validate(model: torch.nn.Module) -> float:
            found = top_classes(self.embed(val_ids, model), 1, gallery=self.state.gallery,
                                vectors=self.embed(fresh_ids, model), classes=fresh_classes)
            return float(np.mean(found[:, 0] == val_classes))

        return validate, len(fresh_ids) + len(val_ids)

    def deploy(self, t: int, generation: int) -> tuple[Outcome, Probed | None]:
        """The session's generation serves from now on; returns the probe set as a new generation embedded it (its cost
        is the evaluation's)."""
        previous, self.state.generation = self.state.generation, generation
        probed = self.state.evaluator.deploy(model=self.state.model, images=self.images, generation=generation)
        return Outcome(generation=generation, detail={"replaced": previous}), probed

    def index(self, t: int) -> tuple[Outcome, tuple[np.ndarray, np.ndarray]]:
        """Add the session's new items, embedded by the deployed generation; returns (sample ids, vectors)."""
        ids = self.stream[t].gallery_ids
        clock = time.perf_counter()
        vectors = self.embed(ids)
        self.state.gallery.add(vectors, sample_ids=ids, class_ids=self.labels_of(ids), session=t, generation=self.generation)
        outcome = Outcome(
            generation=self.generation, seconds=time.perf_counter() - clock, backbone_forwards=len(ids), items=len(ids),
            cost_phase="index", detail={"gallery_size": len(self.state.gallery)},
        )
        return outcome, (ids, vectors)

    def update_replay(self, t: int, fresh: tuple[np.ndarray, np.ndarray]) -> tuple[Outcome, None]:
        """Rebalance the buffer; herding runs on the deployed generation's embeddings of the arrivals (the index
        step's) and of the exemplars already held (re-embedded here, as the CVS code does, billed to `replay`)."""
        session, replay = self.stream[t], self.state.replay
        if "replay" not in self.method.needs or replay.size == 0:
            return Outcome(generation=self.generation, detail={"buffer": 0}), None
        clock = time.perf_counter()
        gallery_ids, vectors = fresh
        train_mask = np.isin(gallery_ids, session.train_ids)
        unindexed = np.setdiff1d(session.train_ids, gallery_ids)  # arrivals that are training-only, if any
        exemplars = replay.class_samples() if REPLAY_SELECTIONS.get(replay.selection).embeds else {}
        to_embed = np.concatenate([unindexed, *exemplars.values()]).astype(np.int64)
        embedded = self.embed(to_embed) if len(to_embed) else np.empty((0, vectors.shape[1]), np.float32)
        ids = np.concatenate([gallery_ids[train_mask], unindexed])
        vecs = np.vstack([vectors[train_mask], embedded[: len(unindexed)]])
        labels = self.labels_of(ids)
        arrivals = {int(c): (ids[labels == c], vecs[labels == c]) for c in np.unique(labels)}
        bounds = np.cumsum([len(unindexed), *[len(v) for v in exemplars.values()]])
        current = {c: embedded[a:b] for c, a, b in zip(exemplars, bounds[:-1], bounds[1:])} if exemplars else None
        # Every class trained on so far, not only those the buffer still holds: once classes outnumber its slots,
        # some drop out of the buffer and must still count.
        seen = len(self.stream.classes_trained(t))
        replay.update(arrivals, classes_seen=seen, rng=self.state.replay_rng, current=current)
        outcome = Outcome(
            generation=self.generation, seconds=time.perf_counter() - clock, backbone_forwards=len(to_embed),
            items=len(to_embed), cost_phase="replay", detail={"buffer": len(replay), "classes": seen},
        )
        return outcome, None

    def transform(self, t: int) -> tuple[Outcome, dict[int, float] | None]:
        """FCT: learn psi (stored -> current generation) on items embedded by both, map the other stale items.
        Returns psi's predicted error per mapped item (the `uncertainty` backfill order), or None."""
        spec, gallery = self.scenario.backfill, self.state.gallery
        maps = BACKFILL_POLICIES.get(spec.policy).maps
        stale = stale_items(gallery, self.generation) if maps else np.empty(0, np.int64)
        if len(stale) == 0:
            return Outcome(generation=self.generation, detail={"policy": spec.policy, "mapped": 0}), None
        clock = time.perf_counter()
        rng = numpy_rng(self.scenario.seed, "transform", t)
        replay_items = np.flatnonzero(np.isin(gallery.sample_ids_of(stale), self.state.replay.sample_ids()))
        pairs = transform_pairs(stale, preferred=stale[replay_items], count=spec.train_items, rng=rng)
        old = gallery.vectors(pairs)
        new = self.embed(gallery.sample_ids_of(pairs))
        # A fifth of the pairs is held out to measure psi; every pair keeps its true new vector.
        held = np.zeros(len(pairs), dtype=bool)
        held[rng.permutation(len(pairs))[: len(pairs) // 5]] = True
        fitted = fit_transform(
            old[~held], new[~held], hidden=spec.hidden, epochs=spec.epochs, lr=spec.lr,
            generator=torch_generator(self.scenario.seed, "transform", t), device=self.device,
        )
        gallery.replace(pairs, new, session=t, generation=self.generation)
        rest = np.setdiff1d(stale, pairs)
        applying = time.perf_counter()
        mapped, variance = fitted.apply(gallery.vectors(rest))
        gallery.replace(rest, mapped, session=t, transformed=True)
        detail = {
            "policy": spec.policy, "pairs": int(len(pairs)), "mapped": int(len(rest)), "psi_train_seconds": fitted.seconds,
            "apply_seconds": time.perf_counter() - applying,  # what grows with the gallery; the rest is a fixed cost per update
        }
        if held.any():
            check, _ = fitted.apply(old[held])
            detail["heldout_error_identity"] = float(((old[held] - new[held]) ** 2).sum(1).mean())
            detail["heldout_error_psi"] = float(((check - new[held]) ** 2).sum(1).mean())
        outcome = Outcome(
            generation=self.generation, seconds=time.perf_counter() - clock, backbone_forwards=len(pairs),
            transform_forwards=fitted.forwards + len(rest) + int(held.sum()), items=len(rest), cost_phase="transform", detail=detail,
        )
        return outcome, dict(zip(rest.tolist(), variance.tolist()))

    def backfill(self, t: int, uncertainty: dict[int, float] | None) -> tuple[Outcome, np.ndarray]:
        """Re-embed the items the policy chooses with the deployed generation (`none`: nothing changes). Measures the
        backfill curve first where asked; returns that measurement's cost (billed to evaluation, not backfill)."""
        spec, gallery = self.scenario.backfill, self.state.gallery
        detail: dict = {"policy": spec.policy}
        outcome = Outcome(generation=self.generation, cost_phase="backfill", detail=detail)
        curve_cost = np.zeros(2)
        if spec.curve_session == t:
            clock = time.perf_counter()
            outcome.artifacts["backfill_curve"], forwards = self._measure_curve(t, uncertainty)
            curve_cost = np.array([forwards, time.perf_counter() - clock])
            detail["curve_seconds"] = float(curve_cost[1])
        clock = time.perf_counter()
        chosen = plan_backfill(
            spec, gallery=gallery, generation=self.generation, rng=numpy_rng(self.scenario.seed, "backfill", t), uncertainty=uncertainty,
        )
        if len(chosen):
            gallery.replace(chosen, self.embed(gallery.sample_ids_of(chosen)), session=t, generation=self.generation)
        detail.update(backfilled=int(len(chosen)), stale_after=int(len(stale_items(gallery, self.generation))))
        outcome.seconds, outcome.backbone_forwards, outcome.items = time.perf_counter() - clock, len(chosen), len(chosen)
        return outcome, curve_cost

    def _measure_curve(self, t: int, uncertainty: dict[int, float] | None):
        """FastFill's backfill curve at session t, on copies (the gallery itself is untouched), and its backbone forwards."""
        s, gallery = self.scenario, self.state.gallery
        session = self.stream[t]
        order = order_items(
            s.backfill.curve_order, stale_items(gallery, self.generation), gallery=gallery,
            rng=numpy_rng(s.seed, "backfill-curve", t), uncertainty=uncertainty,
        )
        query_classes = self.labels_of(session.query_ids)
        home = self.stream.home_of(query_classes)
        curve = backfill_curve(
            gallery=gallery, order=order, new_vectors=self.embed(gallery.sample_ids_of(order)),
            queries=self.embed(session.query_ids), query_classes=query_classes,
            subsets=home_subsets(home, t),
            steps=s.backfill.curve_steps, session=t, order_name=s.backfill.curve_order,
        )
        return curve, len(order) + len(session.query_ids)

    def evaluate(self, t: int, probed: Probed | None, anytime: list[AnytimePoint], curve_cost: np.ndarray) -> tuple[Outcome, None]:
        """Every metric of the session, with the probe set's rows (from deploy) and the anytime points (from training);
        billed with what they and the backfill curve (`curve_cost`: forwards, seconds) cost."""
        done = self.state.evaluator.evaluate(
            session=t, model=self.state.model, images=self.images, gallery=self.state.gallery, generation=self.generation,
            probed=probed, anytime=anytime,
        )
        outcome = Outcome(
            generation=self.generation, seconds=done.seconds + float(curve_cost[1]),
            backbone_forwards=done.backbone_forwards + int(curve_cost[0]), items=len(self.stream[t].query_ids), cost_phase="evaluate",
            metrics=done.rows,
        )
        if self.scenario.output.save_embeddings:
            outcome.artifacts["embeddings"] = {f"session-{t}": done.arrays}
            if probed is not None:
                outcome.artifacts["embeddings"][f"probe-{self.generation}"] = probed.arrays
        return outcome, None

    def end(self, t: int, cpu_clock: float) -> tuple[Outcome, None]:
        """Memory figures per session (a long stream shows here whether anything but the gallery grows), and the CPU
        seconds since `cpu_clock`, the session's start."""
        state = self.state
        detail = {"gallery_size": len(state.gallery), "replay": len(state.replay), **memory.snapshot(state.gallery)}
        detail["cpu_seconds"] = round(time.process_time() - cpu_clock, 3)
        return Outcome(generation=self.generation, detail=detail), None
