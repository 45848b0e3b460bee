"""Anytime evaluation (`evaluation.every_steps`): R@1 of the model in training, every N steps, as a hook."""

from __future__ import annotations

from cvstream.simulator.hooks import Hook


class AnytimeHook(Hook):
    """Evaluates the model in training every `every` steps (evaluation.every_steps)."""

    def __init__(self, every: int):
        self.every = every
        self.session = 0

    def before_session(self, sim, session: int) -> None:
        self.session = session

    def on_train_step(self, sim, step: int, total: int, terms) -> None:
        if step % self.every == 0:
            sim.evaluator.anytime(session=self.session, step=step, model=sim.model, images=sim.images, gallery=sim.gallery)
