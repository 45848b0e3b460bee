"""Data sets and streams: labels in, sessions out (pure, seeded)."""

from __future__ import annotations

from pathlib import Path

from cvstream.errors import DataError, ScenarioError
from cvstream.sessions import paths
from cvstream.sessions.datasets import DATASETS, DatasetSource, LabelSet
from cvstream.sessions.streams import SETUPS, Session, Stream


def open_dataset(scenario, *, data_root: str | Path | None = None, cache_dir: str | Path | None = None) -> DatasetSource:
    source_cls = DATASETS.get(scenario.dataset.name)
    return source_cls(
        scenario.dataset.params,
        data_root=paths.data_root(data_root),
        cache_dir=Path(cache_dir) if cache_dir else paths.cache_dir(),
        seed=scenario.seed,
    )


def load_labels(scenario, source: DatasetSource) -> LabelSet:
    """Check the data set's files and read its labels; a data problem names the scenario file and key."""
    try:
        source.check()
        return source.label_set()
    except DataError as exc:
        raise ScenarioError(str(exc), source=scenario.source, key_path=exc.key_path) from None


def build_stream(scenario, label_set: LabelSet, *, source: str | None = None, data_root: str | Path | None = None) -> Stream:
    """The scenario's stream, its validation samples held out; JSON collections resolve under the data root, stream files
    next to the scenario file."""
    base_dir = Path(source).parent if source and Path(source).is_file() else None
    setup = SETUPS.get(scenario.stream.name)(scenario.stream.params, data_root=paths.data_root(data_root), base_dir=base_dir)
    try:
        stream = setup.build(label_set, scenario.seed)
    except ScenarioError as exc:
        exc.source = exc.source or source
        raise
    except DataError as exc:  # a collection or stream file the scenario names
        raise ScenarioError(str(exc), source=source, key_path=exc.key_path) from None
    return stream.with_validation(scenario.training.validation_fraction, scenario.seed)


def scenario_stream(
    scenario, *, data_root: str | Path | None = None, cache_dir: str | Path | None = None
) -> tuple[DatasetSource, LabelSet, Stream]:
    """The data set, its labels and the stream of a scenario: what every command needs before it works."""
    source = open_dataset(scenario, data_root=data_root, cache_dir=cache_dir)
    label_set = load_labels(scenario, source)
    return source, label_set, build_stream(scenario, label_set, source=scenario.source, data_root=data_root)


__all__ = ["DATASETS", "SETUPS", "DatasetSource", "LabelSet", "Session", "Stream", "open_dataset", "load_labels", "build_stream", "scenario_stream", "paths"]
