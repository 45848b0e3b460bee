"""What a method is: a small object that adds loss terms and says what it needs from the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch
from pydantic import Field

from cvstream.registry import Params, Registry


class MethodParams(Params):
    temperature: float = Field(0.05, gt=0, description="T of the normalised-softmax cross-entropy")


@dataclass
class Batch:
    inputs: torch.Tensor  # float images on the device, already augmented
    rows: torch.Tensor  # classifier row of each sample
    class_ids: torch.Tensor  # original class ids
    embeddings: torch.Tensor  # f_t(x), L2-normalised, with gradient


@dataclass
class TrainContext:
    """What the engine hands a method for one session; only what the method declared it needs is set."""

    session: int
    previous_embed: Callable[[torch.Tensor], torch.Tensor] | None = None  # f_{t-1}, frozen, counted
    class_means: torch.Tensor | None = None  # (classifier rows, dim): E_c per row, zeros where unknown
    old_rows: torch.Tensor | None = None  # bool per row: class has a home session < t and a mean


class Method:
    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    # Any of "previous_model", "replay", "class_means".
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: MethodParams):
        self.params = params

    def training_ids(self, *, session_ids: np.ndarray, replay_ids: np.ndarray) -> np.ndarray:
        """The samples this session trains on: the arrivals, plus the replay buffer if the method uses one."""
        if "replay" in self.needs and len(replay_ids):
            return np.concatenate([session_ids, replay_ids])
        return session_ids

    def loss(self, model: torch.nn.Module, batch: Batch, context: TrainContext) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms; the trainer sums them."""
        raise NotImplementedError


METHODS: Registry[Method] = Registry("method")
