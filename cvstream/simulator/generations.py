"""Each session's generation, kept: a frozen copy of the network and what its training processed.

A run whose scenario has a `timeline` section keeps them, in memory for the driver that reads its
`SessionResult`s and in `generations/session-<t>.pt` (the whole module) and `.json`, written before the
session's checkpoint: a resumed run replays every checkpointed session's generation from there.
"""

from __future__ import annotations

import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from cvstream.errors import UserError
from cvstream.files import atomic_write_bytes, write_json


@dataclass(frozen=True)
class Generation:
    """A session's trained generation: a frozen copy of the network, and what its training step processed."""

    session: int
    generation: int
    model: torch.nn.Module
    images: int  # images through a training step
    forwards: int  # every backbone forward of the train step (the steps' own, the previous model's, validation)


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` that no later training changes."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def _paths(run_dir: Path, session: int) -> tuple[Path, Path]:
    folder = Path(run_dir) / "generations"
    return folder / f"session-{session}.pt", folder / f"session-{session}.json"


def save_generation(run_dir: Path, kept: Generation) -> None:
    weights, info = _paths(run_dir, kept.session)
    weights.parent.mkdir(exist_ok=True)
    buffer = io.BytesIO()
    torch.save(kept.model, buffer)  # the whole module: its architecture and classifier size come with it
    atomic_write_bytes(weights, buffer.getvalue())
    write_json(info, {"session": kept.session, "generation": kept.generation, "images": kept.images, "forwards": kept.forwards})


def load_generation(run_dir: Path, session: int, device: torch.device) -> Generation:
    weights, info = _paths(run_dir, session)
    if not weights.is_file() or not info.is_file():
        raise UserError(f"{run_dir}: session {session} completed but its generation ({weights.name}) is missing; the timeline cannot be replayed")
    meta = json.loads(info.read_text())
    model = torch.load(weights, map_location=device, weights_only=False)
    return Generation(session, int(meta["generation"]), model.eval().requires_grad_(False), int(meta["images"]), int(meta["forwards"]))
