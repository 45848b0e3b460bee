"""Lifecycle hooks: logging, progress and custom measurements plug in here, never into the session.

A hook defines the moments it wants, each with what that moment produced: `before_run(sim)`,
`before_session(sim, session)`, `on_train_step(sim, step, total, terms)`, `after_training(sim,
outcome)`, `after_deploy(sim, outcome)`, `after_evaluation(sim, outcome)` (the step's `Outcome`),
`after_session(sim, result)` (the `SessionResult`) and `after_run(sim, status, record)` (the run's
status and what the driver recorded of it for run.json). `on_train_step` and the `after_<step>`
moments may return metric rows (dicts with `metric` and `value`, optionally `subset`, `gallery_view`,
`query_generation`, `n_queries`: `cvstream.evaluation.rows.hook_row`); they land in metrics.parquet
with the session's other rows. A method named like a moment that is none (`after_trainig`) is
refused when its class is defined.
"""

from __future__ import annotations

import difflib

from cvstream.errors import UserError

MOMENTS = ("before_run", "before_session", "on_train_step", "after_training", "after_deploy", "after_evaluation",
           "after_session", "after_run")


class Hook:
    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in vars(cls).items():
            if name.startswith("_") or name in MOMENTS or not callable(value):
                continue
            close = difflib.get_close_matches(name, MOMENTS, n=1, cutoff=0.8)
            if close or name.startswith(("before_", "after_", "on_")):
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UserError(f"hook {cls.__qualname__}: {name!r} is not a moment{hint}; the moments are {', '.join(MOMENTS)}")

    def before_run(self, sim) -> None: ...

    def before_session(self, sim, session: int) -> None: ...

    def on_train_step(self, sim, step: int, total: int, terms: dict[str, float]) -> list[dict] | None: ...

    def after_training(self, sim, outcome) -> list[dict] | None: ...

    def after_deploy(self, sim, outcome) -> list[dict] | None: ...

    def after_evaluation(self, sim, outcome) -> list[dict] | None: ...

    def after_session(self, sim, result) -> None:
        """After the session's last step, once its rows are committed (the writer saves the session here)."""

    def after_run(self, sim, status: str, record: dict) -> None:
        """At the run's end, `status` `completed`, `stopped`, `interrupted` or `failed`; `record`, what the driver recorded
        of the run beyond the engine's own fields (the service timeline's summary), for run.json."""
