"""The typed scenario: one YAML file, validated before anything runs.

Sections that name a component (dataset, stream, method) are checked against that
component's own parameter model, looked up in its registry; every other name (backbone,
replay selection, gallery index, backfill policy and order, metric) is checked against its
registry too, so adding any component never touches this file.
"""

from __future__ import annotations

import collections.abc
import difflib
import hashlib
import importlib
import json
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError, field_validator, model_serializer, model_validator

from cvstream.errors import ScenarioError
from cvstream.gallery.index import IndexSpec
from cvstream.registry import Params, Registry


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Keys added after scenarios were first hashed: left out of the digest while at their default, so a scenario that
    # does not use them keeps its digest. The complete form (run.json's record) keeps them.
    _omitted_at_default: ClassVar[frozenset[str]] = frozenset()
    # Of those, the ones whose default has changed since: the value digests were taken with (what a record that
    # leaves the key out ran with).
    _digest_baseline: ClassVar[dict[str, Any]] = {}

    @model_serializer(mode="wrap")
    def _omit_new_keys_at_default(self, handler, info):
        data = handler(self)
        if (info.context or {}).get("complete"):
            return data
        for name in self._omitted_at_default:
            if self.at_baseline(name):
                data.pop(name, None)
        return data

    @classmethod
    def baseline(cls, name: str) -> Any:
        """The value a digest-form record means when it leaves `name` out."""
        if name in cls._digest_baseline:
            return cls._digest_baseline[name]
        return cls.model_fields[name].get_default(call_default_factory=True)

    def at_baseline(self, name: str) -> bool:
        return getattr(self, name) == self.baseline(name)


class Component(BaseModel):
    """A named component with its validated parameters (`{name: cvs, alpha: 10}`)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    name: str
    params: Params

    def to_dict(self, key: str) -> dict[str, Any]:
        return {key: self.name, **self.params.model_dump(mode="json")}


def _registered(module: str, registry: str) -> AfterValidator:
    """A field validator: the value must be a name in `module.registry` (read when validating, so plugins count)."""

    def check(value: str) -> str:
        found = getattr(importlib.import_module(module), registry)
        if value not in found:
            raise ValueError(found.unknown_message(value))
        return value

    return AfterValidator(check)


class NetworkSpec(_Section):
    """One generation's network: the scenario's `model`, and each of its `upgrades`."""

    backbone: Annotated[str, _registered("cvstream.models.backbones", "BACKBONES")] = "convnet"
    embedding_dim: int = Field(128, ge=2, le=8192)
    width: int | None = Field(
        None, ge=4, le=1024, description="base channel count of the backbone; default the backbone's own (convnet 32, resnet18-cifar 64)"
    )

    @model_validator(mode="after")
    def _backbone_width(self) -> "NetworkSpec":
        """Fill in the backbone's own width, so the resolved scenario says which network ran."""
        from cvstream.models.backbones import BACKBONES

        backbone = BACKBONES.get(self.backbone)
        if self.width is None:
            object.__setattr__(self, "width", backbone.default_width)  # frozen model: set once, while validating
        elif getattr(backbone, "fixed_width", False) and self.width != backbone.default_width:
            raise ValueError(f"backbone {self.backbone} has fixed widths; width must be {backbone.default_width} or left out, not {self.width}")
        return self


class ModelSpec(NetworkSpec):
    _omitted_at_default: ClassVar[frozenset[str]] = frozenset({"upgrades"})
    upgrades: dict[int, NetworkSpec] = Field(
        default_factory=dict,
        description="SPEC section 12: session -> the network built from scratch at that session and trained against the one it "
        "replaces (sessions >= 1; the embedding never shrinks)",
    )

    @model_validator(mode="after")
    def _upgrades_only_grow(self) -> "ModelSpec":
        dim, since = self.embedding_dim, "model"
        for session, spec in sorted(self.upgrades.items()):
            if session < 1:
                raise ValueError(f"upgrades: session {session}: an upgrade replaces a trained network, so its session is 1 or later")
            if spec.embedding_dim < dim:
                raise ValueError(
                    f"upgrades.{session}.embedding_dim = {spec.embedding_dim} is smaller than the {dim} of {since}: an embedding may only "
                    "grow, since older vectors are compared with a newer one through its first dimensions (SPEC section 12)"
                )
            dim, since = spec.embedding_dim, f"upgrades.{session}"
        return self

    def at(self, session: int) -> NetworkSpec:
        """The network in force at `session`: the latest upgrade at or before it, else `model` itself."""
        earlier = [t for t in self.upgrades if t <= session]
        return self.upgrades[max(earlier)] if earlier else self


class TrainingSpec(_Section):
    epochs: int = Field(5, ge=0, le=100_000)
    batch_size: int = Field(64, ge=2, le=65_536)
    lr: float = Field(0.03, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(1e-4, ge=0, le=1)
    warmup_epochs: int = Field(1, ge=0, description="epochs at lr * warmup_factor before cosine")
    warmup_factor: float = Field(0.1, gt=0, le=1)
    restart_period: int = Field(1, ge=1, description="T_0 of cosine annealing with warm restarts, in epochs")
    restart_mult: int = Field(2, ge=1, description="T_mult")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="eta_min = lr * min_lr_ratio")
    augment: bool | None = Field(None, description="random crop and flip; None: the data set decides")
    eval_batch_size: int = Field(512, ge=1)
    amp: bool = Field(True, description="bfloat16 mixed precision where the hardware has it: CUDA, CPUs with AVX512-BF16 or AMX")
    validation_fraction: float = Field(
        0.0, ge=0, lt=1, description="share of each class's arrivals held out (never trained on, indexed or replayed) to keep the "
        "epoch with the best R@1 (0: off)",
    )
    _omitted_at_default: ClassVar[frozenset[str]] = frozenset(
        {"lr_every", "validate_on", "crop_padding", "randaugment", "input_scaling", "classifier_init", "seed"}
    )
    lr_every: Literal["step", "epoch"] = Field(
        "step", description="when the schedule sets the rate: every step (the cosine evaluated at fractional epochs) or once per epoch, "
        "at whole epochs (as the CVS code's loop does)",
    )
    validate_on: Literal["session", "seen"] = Field(
        "session", description="held-out samples that pick the best epoch: the current session's, or those of every session so far"
    )
    crop_padding: Literal["reflect", "zeros"] = Field("reflect", description="padding of the random crop: reflected edges or black pixels")
    randaugment: bool = Field(
        False, description="after crop and flip, two random operations per image, each with probability 0.5, as the randaugment "
        "package the CVS code uses (batched on decoded tensors)",
    )
    input_scaling: Literal["unit-range", "mean-std"] = Field(
        "unit-range", description="network inputs: pixels scaled to [-1, 1], or normalised by the data set's per-channel mean and std"
    )
    classifier_init: Literal["normal", "uniform"] = Field(
        "normal", description="rows of new classes: N(0, 1/d), or U(-1/sqrt(d), 1/sqrt(d)) as the CVS code's cosine layer (shorter "
        "rows, which a cosine classifier turns faster)",
    )
    seed: int | None = Field(
        None, ge=0, lt=2**63, description="seed of what training draws (initial weights, batches, augmentation, classifier rows); "
        "None: the scenario's seed. The stream follows the scenario's seed alone",
    )


class ReplaySpec(_Section):
    size: int = Field(2000, ge=0)
    selection: Annotated[str, _registered("cvstream.gallery.replay", "REPLAY_SELECTIONS")] = "herding"


_INDEX = IndexSpec()  # the gallery's own defaults


class GallerySpec(_Section):
    index: Annotated[str, _registered("cvstream.gallery.index", "INDEX_TYPES")] = _INDEX.index
    nlist: int = Field(_INDEX.nlist, ge=1, le=1 << 20, description="ivf, ivfpq: inverted lists (coarse centroids)")
    nprobe: int = Field(_INDEX.nprobe, ge=1, description="ivf, ivfpq: lists visited per query")
    pq_m: int = Field(_INDEX.pq_m, ge=1, description="ivfpq: sub-quantisers; must divide model.embedding_dim")
    pq_bits: int = Field(_INDEX.pq_bits, ge=1, le=16, description="ivfpq: bits per sub-quantiser code")
    hnsw_m: int = Field(_INDEX.hnsw_m, ge=2, le=512, description="hnsw: neighbours per node")
    ef_construction: int = Field(_INDEX.ef_construction, ge=1, description="hnsw: candidate list while inserting")
    ef_search: int = Field(_INDEX.ef_search, ge=1, description="hnsw: candidate list while searching")
    train_size: int | None = Field(
        _INDEX.train_size, ge=1, description="ivf, ivfpq: train once on a seeded sample of this many first-session vectors (None: all)"
    )
    segment_size: int = Field(
        _INDEX.segment_size, ge=1, le=1 << 30,
        description="items per index segment: adds go to the newest segment and an hnsw rebuild touches only the segments it changes, "
        "so neither grows with the gallery; a search visits every segment",
    )
    gpu: bool = Field(_INDEX.gpu, description="use the Faiss GPU index when faiss has GPU support and a CUDA device is present")
    _omitted_at_default: ClassVar[frozenset[str]] = frozenset({"narrow_queries"})
    _digest_baseline: ClassVar[dict[str, Any]] = {"narrow_queries": "pad"}  # the default until normalize replaced it
    narrow_queries: Literal["pad", "normalize"] = Field(
        _INDEX.narrow_queries,
        description="after a model upgrade, how a wider query scores narrower stored vectors (SPEC section 12), in every search of the "
        "gallery: `normalize` (its first components rescaled to unit length: a cosine in the older space, on the scale of the wider "
        "items' scores) or `pad` (its first components as they are, as zero-padding the stored vector would: BT^2's evaluation)",
    )


BackfillOrder = Annotated[str, _registered("cvstream.gallery.backfill", "BACKFILL_ORDERS")]


class BackfillSpec(_Section):
    policy: Annotated[str, _registered("cvstream.gallery.backfill", "BACKFILL_POLICIES")] = "none"
    budget: int | float | None = Field(
        None, description="partial, transform (optional): items re-embedded per session, a fraction of the gallery in (0, 1] or a count >= 1"
    )
    order: BackfillOrder = Field("random", description="which items a partial backfill re-embeds first")
    hidden: int = Field(256, ge=1, le=65_536, description="transform: hidden width of the MLP psi")
    epochs: int = Field(30, ge=1, le=10_000, description="transform: epochs of psi training")
    lr: float = Field(1e-3, gt=0, le=10, description="transform: Adam learning rate of psi")
    train_items: int = Field(256, ge=4, description="transform: stale items embedded by both generations to learn psi (replay buffer first)")
    curve_session: int | None = Field(None, ge=0, description="session at which to measure the backfill curve (None: none)")
    curve_order: BackfillOrder = Field("random", description="order of the backfill curve")
    curve_steps: int = Field(10, ge=1, le=100, description="backfill curve: fractions 0, 1/steps, ..., 1")

    @model_validator(mode="after")
    def _budget_and_orders_fit_the_policy(self) -> "BackfillSpec":
        from cvstream.gallery.backfill import backfill_problem

        problem = backfill_problem(self.policy, self.budget, self.order, curve_order=self.curve_order)
        if problem:
            raise ValueError(problem)
        return self


class EvaluationSpec(_Section):
    recall_at: list[int] = Field(default_factory=lambda: [1, 2, 4, 10])
    map_at_r: bool = True
    metrics: list[Annotated[str, _registered("cvstream.evaluation.metrics", "METRICS")]] = Field(
        default_factory=list, description="more per-query metrics, by registered name (cvstream.evaluation.metrics.METRICS)"
    )
    probe_items: int = Field(2000, ge=0, description="gallery items embedded by every generation for the compatibility matrix; 0: none")
    every_steps: int | None = Field(None, ge=1, description="anytime evaluation every N training steps (A_auc); None: off")

    @field_validator("recall_at")
    @classmethod
    def _positive_sorted(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value):
            raise ValueError("must be a non-empty list of positive integers")
        return sorted(set(value))

    @field_validator("metrics")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        if "map@r" in value:
            raise ValueError("map@r has its own key: evaluation.map_at_r")
        if len(set(value)) != len(value):
            raise ValueError(f"a metric is listed twice ({', '.join(value)})")
        return value


class OutputSpec(_Section):
    dir: str = Field("runs", description="runs go to <dir>/<scenario name>/<run id>/ unless --out is given")
    save_embeddings: bool = Field(False, description="keep embeddings/session-<t>.npz: the vectors each evaluation searched")
    _omitted_at_default: ClassVar[frozenset[str]] = frozenset({"trackers"})
    trackers: list[Annotated[str, _registered("cvstream.simulator.trackers", "TRACKERS")]] = Field(
        default_factory=list, description="also send every metric and cost row and the scenario to these trackers (tensorboard, mlflow)"
    )


class AcceleratorCounts(_Section):
    train: int = Field(8, ge=1, le=1_000_000, description="accelerators of a training job")
    backfill: int = Field(8, ge=1, le=1_000_000, description="accelerators of the backfill worker")
    serve: int = Field(1, ge=1, le=1_000_000, description="accelerators serving queries and embedding arrivals")


class AcceleratorProfile(_Section):
    tflops: float = Field(400.0, gt=0, le=1e6, description="peak TFLOP/s of one accelerator")
    utilization: float = Field(0.35, gt=0, le=1, description="share of the peak a job sustains")
    price_per_hour: float | None = Field(None, ge=0, description="money per accelerator-hour: the summary gives each job's cost")


class MemoryProfile(_Section):
    price_per_tb_hour: float | None = Field(
        None, ge=0, description="money per TB-hour of serving memory (the gallery's vectors: two generations' while a waiting "
        "deploy's backfill runs): the summary gives its cost, and cost_total and the frontier count it",
    )
    billing: Literal["provisioned", "used"] = Field(
        "provisioned", description="provisioned: the peak memory for the whole horizon (a fleet sized for its peak); used: the "
        "memory each hour holds (capacity added only while it is needed)",
    )


class GivenThroughput(_Section):
    train: float = Field(..., gt=0, description="training images per second per accelerator")
    embed: float = Field(..., gt=0, description="embedding forwards per second per accelerator")
    transform: float | None = Field(None, gt=0, description="psi mappings per second per accelerator (default: embed x backbone/psi FLOPs)")


class TimelineSpec(_Section):
    """SPEC section 11: the service replayed on a simulated clock in hours."""

    _omitted_at_default: ClassVar[frozenset[str]] = frozenset({"memory"})
    session_interval_hours: float = Field(168.0, gt=0, le=1e6, description="session t's data is complete at t x interval")
    ingest: Literal["continuous", "at-deploy"] = "continuous"
    deploy: Literal["hot", "after-backfill"] = "hot"
    queries: Literal["new", "dual", "adapter"] = "new"
    accelerators: AcceleratorCounts = AcceleratorCounts()
    throughput: Literal["flops", "measured"] | GivenThroughput = "flops"
    accelerator: AcceleratorProfile = AcceleratorProfile()
    memory: MemoryProfile = MemoryProfile()
    eval_every_hours: float = Field(6.0, gt=0, le=1e6, description="evaluate at every multiple (and after every deploy and backfill)")
    eval_min_change: float = Field(
        0.01, gt=0, le=1, description="also evaluate whenever the served gallery has changed (items added, re-embedded or mapped) "
        "by more than this fraction of its items since the last evaluation",
    )
    queries_per_hour: float = Field(1000.0, ge=0, description="traffic, for the serving cost")
    horizon_hours: float | None = Field(None, gt=0, description="when the simulation stops; default the end of the last session's interval")
    chunk_items: int = Field(1024, ge=1, le=1 << 30, description="items the backfill worker re-embeds per chunk")
    item_scale: float = Field(
        1.0, ge=1, le=1e12, description="each gallery item stands for this many of the service's: ingest "
        "and backfill take that much longer, searches scan that many more (queries_per_hour is the service's own traffic)",
    )
    train_scale: float = Field(
        1.0, ge=1, le=1e12, description="each training image stands for this many of the service's: a training job takes that much longer",
    )


_COMPONENT_KEYS = {"dataset": "name", "stream": "setup", "method": "name"}


class Scenario(_Section):
    _omitted_at_default: ClassVar[frozenset[str]] = frozenset({"timeline"})
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: int = Field(0, ge=0, lt=2**63)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dataset: Component
    stream: Component
    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    method: Component
    replay: ReplaySpec = ReplaySpec()
    gallery: GallerySpec = GallerySpec()
    backfill: BackfillSpec = BackfillSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    output: OutputSpec = OutputSpec()
    timeline: TimelineSpec | None = Field(None, description="SPEC section 11; absent: no timeline, {}: every default")
    _source: str = PrivateAttr("scenario")
    _notes: list[str] = PrivateAttr(default_factory=list)  # what the overrides changed beyond what they named

    @property
    def source(self) -> str:
        """The file (or 'scenario') this came from, for error messages."""
        return self._source

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> "Scenario":
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ScenarioError("file not found", source=source) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ScenarioError(f"cannot read the file ({exc})", source=source) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ScenarioError(f"{where}not valid YAML ({problem})", source=source) from None
        return cls.from_dict(data, source=source, overrides=overrides)

    @classmethod
    def from_dict(
        cls, data: Any, *, source: str = "scenario", overrides: list[str] | tuple[str, ...] = ()
    ) -> "Scenario":
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ScenarioError(f"the top level must be a mapping of keys, got {type(data).__name__}", source=source)
        data = json.loads(json.dumps(data, default=str))  # a deep copy we may edit
        notes = [note for item in overrides for note in apply_override(data, item, source=source)]
        fields = dict(data)
        problems: list[ScenarioError] = []  # every problem of the file goes into the one message (SPEC section 8)
        for key, discriminator in _COMPONENT_KEYS.items():
            if key not in fields:
                problems.append(ScenarioError(f"missing section; it needs at least {{{discriminator}: ...}}", source=source, key_path=key))
                continue
            try:
                fields[key] = _component(key, discriminator, fields[key], source=source)
            except ScenarioError as exc:
                problems.append(exc)
        if problems:  # the other sections can still be checked on their own; cross-section rules need them all
            for key, value in fields.items():
                if key in _COMPONENT_KEYS:
                    continue
                if key not in cls.model_fields:
                    allowed = sorted(cls.model_fields)
                    close = difflib.get_close_matches(str(key), allowed, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    problems.append(ScenarioError(f"unknown key{hint}; allowed keys: {', '.join(allowed)}", source=source, key_path=str(key)))
                    continue
                section = cls.model_fields[key].annotation
                try:
                    TypeAdapter(section).validate_python(value)
                except ValidationError as exc:
                    problems.append(_scenario_error(exc, source=source, model=section, prefix=(key,)))
            raise _joined(problems, source=source)
        try:
            scenario = cls.model_validate(fields)
        except ValidationError as exc:
            raise _scenario_error(exc, source=source, model=cls) from None
        scenario._source = source
        scenario._notes = notes
        return scenario

    @classmethod
    def from_record(cls, data: dict, *, source: str = "run.json") -> "Scenario":
        """The scenario a run recorded. A record in the digest's form (written before run.json kept every key) leaves
        out keys at their baseline: they are filled in with it, so a default changed since does not change the run."""
        data = json.loads(json.dumps(data))
        _fill_baselines(cls, data)
        return cls.from_dict(data, source=source)

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "Scenario":
        """The scenario a run folder's run.json recorded (to resume it: `Simulator(scenario, out_dir=run_dir, resume=True)`)."""
        from cvstream.simulator.run import read_info

        return cls.from_record(read_info(run_dir)["scenario"], source=str(Path(run_dir) / "run.json"))

    # -- views -------------------------------------------------------------------------

    def to_dict(self, *, complete: bool = False) -> dict[str, Any]:
        """The resolved scenario. By default keys added since digests were first taken are left out while at their
        default (the digest's form); `complete` keeps every key with its value (the form a run records)."""
        out: dict[str, Any] = {}
        context = {"complete": complete}
        for key in type(self).model_fields:
            if key in self._omitted_at_default and self.at_baseline(key) and not complete:
                continue
            value = getattr(self, key)
            if isinstance(value, Component):
                out[key] = value.to_dict(_COMPONENT_KEYS[key])
            elif isinstance(value, BaseModel):
                out[key] = value.model_dump(mode="json", context=context)
            else:
                out[key] = value
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(complete=True), sort_keys=False)

    @property
    def training_seed(self) -> int:
        """The seed of what training draws: `training.seed`, else the scenario's."""
        return self.seed if self.training.seed is None else self.training.seed

    def digest(self) -> str:
        """A hash of the resolved scenario: two runs with the same digest simulate the same thing."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fill_baselines(model: type[BaseModel], data: dict) -> None:
    """Put back, in place, the keys a digest-form record of `model` left out at their baseline."""
    for name in getattr(model, "_omitted_at_default", ()):
        if name not in data:
            baseline = model.baseline(name)
            data[name] = baseline.model_dump(mode="json") if isinstance(baseline, BaseModel) else baseline
    for name, field in model.model_fields.items():
        section = _section_type(field.annotation)
        if section is not None and issubclass(section, _Section) and typing.get_origin(field.annotation) is not dict:
            if name not in data and field.is_required() is False and model is Scenario:
                data[name] = {}  # a section the record left out entirely still ran with its baselines
            if isinstance(data.get(name), dict):
                _fill_baselines(section, data[name])


def _registry_for(key: str) -> Registry:
    if key == "dataset":
        from cvstream.sessions.datasets import DATASETS

        return DATASETS
    if key == "stream":
        from cvstream.sessions.streams import SETUPS

        return SETUPS
    from cvstream.models.methods import METHODS

    return METHODS


def _component(key: str, discriminator: str, raw: Any, *, source: str) -> Component:
    if isinstance(raw, str):
        raw = {discriminator: raw}
    if not isinstance(raw, dict):
        raise ScenarioError(f"must be a mapping with a {discriminator!r} key, got {raw!r}", source=source, key_path=key)
    raw = dict(raw)
    name = raw.pop(discriminator, None)
    registry = _registry_for(key)
    if name is None:
        raise ScenarioError(f"missing; allowed: {', '.join(registry.names())}", source=source, key_path=f"{key}.{discriminator}")
    if not isinstance(name, str) or name not in registry:
        raise ScenarioError(registry.unknown_message(name), source=source, key_path=f"{key}.{discriminator}")
    params_cls = registry.get(name).Params
    try:
        params = params_cls.model_validate(raw)
    except ValidationError as exc:
        raise _scenario_error(exc, source=source, model=params_cls, prefix=(key,)) from None
    return Component(name=name, params=params)


def _scenario_error(exc: ValidationError, *, source: str, model: type[BaseModel], prefix: tuple = ()) -> ScenarioError:
    """Turn pydantic's report into one paragraph that names the key path and what is allowed."""
    lines = []
    first_path = None
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        path = _format_loc(loc)
        first_path = first_path or path
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, tuple(err["loc"])[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"{path}: unknown key{hint}; allowed keys: {', '.join(allowed)}")
        elif err["type"] == "missing":
            lines.append(f"{path}: required key is missing")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{path}: {err['msg']}{shown}")
    return ScenarioError("; ".join(lines), source=source, key_path=first_path)


def _joined(problems: list[ScenarioError], *, source: str) -> ScenarioError:
    """Several problems as one error: each with its key path, in the order found."""
    if len(problems) == 1:
        return problems[0]
    return ScenarioError("; ".join(p.located for p in problems), source=source, key_path=problems[0].key_path)


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _section_type(annotation: Any) -> Any:
    """The model class an annotation holds: itself, the value type of a dict or list, the model member of a union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _section_type(args[0])
    candidates = args[-1:] if origin in (dict, collections.abc.Mapping) else args
    for arg in candidates:
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys a section at `loc` accepts; entries of a mapping or list (model.upgrades.<session>) are skipped."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            continue  # a dict key or list index inside a field: the field's value type already stands here
        current = _section_type(fields[part].annotation)
        if current is None:
            return []
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def apply_override(data: dict, item: str, *, source: str = "--set") -> list[str]:
    """Apply `key.path=value` to a raw scenario mapping; the value is parsed as YAML. Returns notes for the user
    (the keys a change of component dropped)."""
    if "=" not in item:
        raise ScenarioError(f"--set {item!r}: expected key.path=value", source=source)
    path, _, text = item.partition("=")
    keys = [k for k in path.strip().split(".")]
    if not all(keys):
        raise ScenarioError(f"--set {item!r}: empty key in the path", source=source)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif isinstance(child, str) and key in _COMPONENT_KEYS:
            child = node[key] = {_COMPONENT_KEYS[key]: child}
        elif not isinstance(child, dict):
            raise ScenarioError(
                f"--set {item!r}: {'.'.join(keys[: depth + 1])} is not a mapping", source=source
            )
        node = child
    notes = _drop_foreign_keys(data, keys, value, item)
    node[keys[-1]] = value
    return notes


def _drop_foreign_keys(data: dict, keys: list[str], value: Any, item: str) -> list[str]:
    """`--set method.name=bct` on a section written for cvs: drop the keys only the old component takes, and say so."""
    if len(keys) != 2 or _COMPONENT_KEYS.get(keys[0]) != keys[1] or not isinstance(data.get(keys[0]), dict):
        return []
    section, registry = data[keys[0]], _registry_for(keys[0])
    old = section.get(keys[1])
    if old == value or not isinstance(old, str) or old not in registry or not isinstance(value, str) or value not in registry:
        return []
    taken = set(registry.get(value).Params.model_fields)
    dropped = sorted(k for k in section if k != keys[1] and k in registry.get(old).Params.model_fields and k not in taken)
    for k in dropped:
        del section[k]
    if not dropped:
        return []
    return [f"--set {item}: dropped {', '.join(f'{keys[0]}.{k}' for k in dropped)} ({old}'s parameters, which {value} does not take)"]
