"""What a run carries from one session to the next. The checkpoint saves exactly this, field by field."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cvstream.evaluation.evaluator import Evaluator
from cvstream.gallery import Gallery, ReplayBuffer


@dataclass
class RunState:
    """The run between two sessions. Adding a field here is the only way to make a session remember something,
    and `cvstream.simulator.checkpoint` must then save and restore it (its test, which compares a resumed state with
    the saved one field by field, fails until it does)."""

    # The deployed generation's network, trained in place by the next session, or replaced by a new one at a model
    # upgrade (SPEC section 12): its `spec` says which network it is, and the checkpoint saves that with its weights.
    model: torch.nn.Module
    generation: int  # the deployed generation; -1 before the first deploy
    gallery: Gallery
    replay: ReplayBuffer
    evaluator: Evaluator  # the probe vectors of every generation, last answers, per-group history
    train_generator: torch.Generator  # batching and augmentation
    replay_rng: np.random.Generator
    next_session: int = 0
    # The generation store's key of the last trained session (SPEC section 13): the next session's key chains on it.
    # Empty where the run keeps no store (a run that resumes with one then trains without it).
    lineage: str = ""
