"""metrics.parquet's one row type: aggregated rows on a hand case, a hook's rows with their defaults, and the table it fills."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cvstream.evaluation.evaluator import aggregate
from cvstream.evaluation.rows import COLUMNS, MetricRow, hook_row
from cvstream.simulator.tables import Tables


def test_aggregate_gives_one_row_per_non_empty_subset_and_metric():
    per_query = {"recall@1": np.array([1.0, 0.0, 1.0, 1.0]), "map@r": np.array([0.5, np.nan, 1.0, 0.25])}
    subsets = {"old": np.array([True, True, False, False]), "new": np.zeros(4, bool), "all": np.ones(4, bool)}
    rows = aggregate(per_query, subsets, session=3, query_generation=2, gallery_view="mixed")
    assert rows == [
        MetricRow(session=3, query_generation=2, gallery_view="mixed", subset="old", metric="recall@1", value=0.5, n_queries=2),
        MetricRow(session=3, query_generation=2, gallery_view="mixed", subset="old", metric="map@r", value=0.5, n_queries=1),
        MetricRow(session=3, query_generation=2, gallery_view="mixed", subset="all", metric="recall@1", value=0.75, n_queries=4),
        MetricRow(session=3, query_generation=2, gallery_view="mixed", subset="all", metric="map@r", value=0.5833333333333334, n_queries=3),
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rows[0].value = 1.0


def test_a_hooks_row_takes_the_defaults_and_may_name_its_own_columns():
    assert hook_row({"metric": "gallery_items", "value": 60}, session=1, query_generation=0) == MetricRow(
        session=1, query_generation=0, gallery_view="hook", subset="all", metric="gallery_items", value=60, n_queries=0)
    own = hook_row({"metric": "m", "value": 0.5, "subset": "old", "gallery_view": "mixed", "n_queries": 7}, session=1, query_generation=0)
    assert (own.subset, own.gallery_view, own.n_queries) == ("old", "mixed", 7)
    with pytest.raises(ValueError, match="colour"):
        hook_row({"metric": "m", "value": 1.0, "colour": "red"}, session=0, query_generation=0)
    with pytest.raises(ValueError, match="value"):
        hook_row({"metric": "m"}, session=0, query_generation=0)


def test_the_metrics_table_is_the_rows_columns_after_the_run_id():
    tables = Tables()
    row = MetricRow(session=0, query_generation=0, gallery_view="probe", subset="all", metric="ac", value=float("nan"), n_queries=30)
    tables.add_metric("run", row)
    tables.commit()
    frame = tables.frame("metrics")
    assert list(frame.columns) == ["run_id", *COLUMNS]
    assert frame.iloc[0].drop("run_id").to_dict().keys() == dataclasses.asdict(row).keys()
    assert frame.dtypes[["session", "query_generation", "n_queries"]].eq("int64").all() and frame.dtypes["value"] == "float64"
