"""A row of metrics.parquet: one type, `MetricRow`, whatever measured it.

Every producer returns `MetricRow`s; the run's tables (`cvstream.simulator.tables`) add the run id and turn
them into the table's dicts, the one place they are converted. Where each number comes from (`gallery_view`,
then `metric`; `<k>` from `evaluation.recall_at`, `<g>` a generation, `<h>` a home session, `<s>` a step):

| gallery_view  | metric                                                      | subset        | produced by                        |
|---------------|-------------------------------------------------------------|---------------|------------------------------------|
| `mixed`       | `recall@<k>`, `map@r`, those of `evaluation.metrics`        | old, new, all | `Evaluator.evaluate` (`aggregate`) |
| `mixed`       | `ar@<k>`                                                    | all           | `Evaluator._history_rows`          |
| `mixed`       | `recall@1`, `forgetting`                                    | `home:<h>`    | `Evaluator._history_rows`          |
| `mixed`       | `forgetting` (the mean over the older groups)               | old           | `Evaluator._history_rows`          |
| `mixed`       | `negative_flip`                                             | old, new, all | `Evaluator._flip_rows`             |
| `mixed`       | `calibration_old_positive`, `calibration_new_negative_top`  | all           | `Evaluator.evaluate` (`aggregate`) |
| `gen:<g>`     | `recall@1` (a row of the compatibility matrix)              | all           | `ProbeSet.rows`                    |
| `gen:<g>`     | `bct_criterion` (against the previous generation)           | all           | `ProbeSet.rows`                    |
| `probe`       | `ac`, `bc`, `fc`                                            | all           | `ProbeSet.rows`                    |
| `anytime:<s>` | `recall@1` (the model in training, at step s)               | old, new, all | `Evaluator.anytime` (`aggregate`)  |
| `anytime`     | `a_auc`                                                     | all           | `Evaluator.evaluate`               |
| `hook`*       | any (a hook's own measurement)                              | `all`*        | a hook's moment (`hook_row`)       |

*: by default; a hook's row may name its own (and its `query_generation` and `n_queries`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, kw_only=True)
class MetricRow:
    """One number of metrics.parquet: what was measured (`metric`, `value`, over `n_queries` queries of `subset`), at
    which `session`, by which generation's queries (`query_generation`) against which gallery (`gallery_view`)."""

    session: int
    query_generation: int
    gallery_view: str
    subset: str
    metric: str
    value: float
    n_queries: int


COLUMNS = tuple(f.name for f in fields(MetricRow))  # metrics.parquet's columns after its run id, in this order


def hook_row(row: dict, *, session: int, query_generation: int) -> MetricRow:
    """A row that a hook's moment returned (a dict with `metric` and `value`, optionally the other columns): by default
    of subset `all`, gallery view `hook`, the deployed generation's, over no queries."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"metric row with unknown columns {sorted(unknown)}; a row has {list(COLUMNS)}")
    missing = {"metric", "value"} - set(row)
    if missing:
        raise ValueError(f"metric row {row!r} without {sorted(missing)}; a hook's row has at least `metric` and `value`")
    return MetricRow(**{"session": session, "subset": "all", "gallery_view": "hook", "query_generation": query_generation,
                        "n_queries": 0, **row})
