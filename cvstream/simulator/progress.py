"""A rich progress bar as a hook: sessions, and the training steps of the current one."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cvstream.simulator.hooks import Hook


class ProgressHook(Hook):
    def __init__(self, console=None):
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=console, transient=True,
        )
        self.sessions = None
        self.steps = None

    def before_run(self, sim) -> None:
        self.progress.start()
        self.sessions = self.progress.add_task("sessions", total=len(sim.stream), info="")
        self.steps = self.progress.add_task("training", total=None, info="")

    def before_session(self, sim, session: int) -> None:
        self.progress.update(self.sessions, info=f"session {session}")
        self.progress.reset(self.steps, total=None, info="")

    def on_train_step(self, sim, step, total, terms) -> None:
        loss = " ".join(f"{k}={v:.3f}" for k, v in terms.items())
        self.progress.update(self.steps, completed=step, total=total, info=loss)

    def after_session(self, sim, result) -> None:
        self.progress.advance(self.sessions)

    def after_run(self, sim, status, record) -> None:
        self.progress.stop()
