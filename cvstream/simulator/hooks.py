"""Lifecycle hooks: logging, progress and custom measurements plug in here, never into the session.

A hook sees every step of every session (`before_event`, `after_event`), every training
step, and the run's start and end. `after_event` and `on_train_step` may return metric
rows (dicts with `metric` and `value`, optionally `subset`, `gallery_view`,
`query_generation`, `n_queries`); they land in metrics.parquet with the session's other
rows. `sim.record_metrics(rows, session=t)` does the same from anywhere else.
"""

from __future__ import annotations


class Hook:
    def before_run(self, sim) -> None: ...

    def before_event(self, sim, event) -> None: ...

    def after_event(self, sim, event, outcome) -> list[dict] | None: ...

    def on_train_step(self, sim, step: int, total: int, terms: dict[str, float]) -> list[dict] | None: ...

    def after_session(self, sim, session: int) -> None:
        """After the session's last step, once its rows are committed (the writer saves the session here)."""

    def after_run(self, sim, status: str) -> None: ...
