"""Resume: the run state (`RunState`, field by field) at the end of each completed session, saved atomically.

`checkpoint/session-<t>/` holds the model and the batching generator (`state.pt`, read back
with `weights_only=True`), the replay buffer, evaluation state and the gallery's running
class sums as arrays (`arrays.npz`), plain values, the model's network spec (a model upgrade
changes it: a resumed run builds that network before loading its weights) and the replay
generator (`state.json`), and the gallery as a
saved gallery folder (`gallery/`, read back with `Gallery.load`), whose files are hard
links to the run's own gallery files of that session: the run replaces a changed file by
renaming a new one over it, so the link keeps the session's version, and a checkpoint
costs the gallery's new segments, not the gallery. `checkpoint/latest.json`, written last,
names the newest complete one. Table rows are not copied: the run's Parquet files are
append-only, so a resumed run keeps their first rows up to the counts saved here.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from cvstream.errors import UserError
from cvstream.gallery.index import Gallery
from cvstream.models.net import EmbeddingNet
from cvstream.simulator.outputs import OutputError, atomic_write_bytes, read_parquet, write_json
from cvstream.simulator.state import RunState

CHECKPOINT_VERSION = 3  # 3: the run state field by field (RunState); 2: the gallery as a saved gallery folder
GALLERY = "gallery"  # the checkpoint's gallery folder: Gallery.save, hard-linked from the run's files where unchanged


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """`load_state_dict`, after resizing what grew during the run (classifier rows, class ids)."""
    current = model.state_dict()
    for name, value in state.items():
        if name in current and current[name].shape != value.shape:
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            blank = torch.empty_like(value, device=current[name].device)
            setattr(owner, attr, torch.nn.Parameter(blank) if isinstance(getattr(owner, attr), torch.nn.Parameter) else blank)
    model.load_state_dict(state)


def model_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The network's weights on the CPU, as a checkpoint (and a stored training) keeps them."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def restored_model(model: torch.nn.Module, spec: dict | None, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """`model` holding `weights`, or, where `spec` names another network (a model upgrade happened), a new network of
    that spec on `model`'s device holding them. `spec` None: the network `model` is."""
    if spec is not None and spec != model.spec:
        device = model.weight.device
        with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten below; keep the global RNG as it was
            model = EmbeddingNet(**spec).to(device)
    load_model_state(model, weights)
    return model


# -- save and restore ----------------------------------------------------------------------


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoint"


def save(state: RunState, run_dir: Path, *, rows: dict[str, int]) -> None:
    """Save the run state after its last completed session (`state.next_session - 1`), then point latest.json at it.
    `rows` are the tables' committed row counts."""
    session = state.next_session - 1
    root = checkpoint_dir(run_dir)
    folder = root / f"session-{session}"
    try:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"cannot create {folder}: {exc.strerror or exc}; the files of completed sessions are intact") from None
    tensors = {"model": model_weights(state.model),
               "train_generator": state.train_generator.get_state()}
    arrays = {f"replay.{k}": v for k, v in state.replay.state().items()}
    evaluation_arrays, evaluation_values = state.evaluator.state()
    arrays.update({f"evaluator.{k}": v for k, v in evaluation_arrays.items()})
    # The gallery as saved files (the run's own gallery was just saved: its files are linked, not copied),
    # plus its running class sums, which a reload would otherwise recompute with different rounding.
    state.gallery.save(folder / GALLERY)
    arrays["gallery.class_sum"], arrays["gallery.class_count"] = state.gallery.class_sums()
    values = {
        "version": CHECKPOINT_VERSION, "session": session, "generation": state.generation, "next_session": state.next_session,
        "model_spec": state.model.spec,
        "replay_rng": state.replay_rng.bit_generator.state, "evaluator": evaluation_values, "rows": dict(rows),
        "lineage": state.lineage,
    }
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    atomic_write_bytes(folder / "state.pt", buffer.getvalue())
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(folder / "arrays.npz", buffer.getvalue())
    write_json(folder / "state.json", values)
    write_json(root / "latest.json", {"version": CHECKPOINT_VERSION, "session": session, "folder": folder.name})
    for old in root.glob("session-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)


def latest(run_dir: Path) -> dict | None:
    path = checkpoint_dir(run_dir) / "latest.json"
    if not path.is_file():
        return None
    pointer = _read_json(path)
    if pointer.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{run_dir}: its checkpoint was written by an incompatible cvstream (version {pointer.get('version')})")
    return pointer


def restore(state: RunState, run_dir: Path) -> dict[str, list[dict]]:
    """Bring a freshly built run state to the end of the last saved session, in place; returns the tables' rows so far."""
    pointer = latest(run_dir)
    if pointer is None:
        return _tables(run_dir, {"metrics": 0, "costs": 0, "events": 0})
    folder = checkpoint_dir(run_dir) / str(pointer.get("folder"))
    values = _read_json(folder / "state.json")
    tensors = _load(folder / "state.pt", lambda path: torch.load(path, weights_only=True, map_location="cpu"))
    arrays = _load(folder / "arrays.npz", _read_npz)
    try:
        # model_spec is absent in checkpoints of runs before model upgrades: the scenario's network
        state.model = restored_model(state.model, values.get("model_spec"), tensors["model"])
        state.train_generator.set_state(tensors["train_generator"])
        state.replay_rng.bit_generator.state = values["replay_rng"]
        state.generation, state.next_session = int(values["generation"]), int(values["next_session"])
        state.lineage = str(values.get("lineage", ""))  # absent in checkpoints from before the store: no chain to extend
        state.replay.restore({k.removeprefix("replay."): v for k, v in arrays.items() if k.startswith("replay.")})
        state.evaluator.restore({k.removeprefix("evaluator."): v for k, v in arrays.items() if k.startswith("evaluator.")},
                                values["evaluator"])
        class_sums = (arrays["gallery.class_sum"], arrays["gallery.class_count"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{folder}: the checkpoint is incomplete or damaged ({type(exc).__name__}: {exc}); the run cannot be resumed") from None
    state.gallery = Gallery.load(folder / GALLERY, class_sums=class_sums)
    return _tables(run_dir, values["rows"])


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _load(path: Path, loader):
    try:
        return loader(path)
    except Exception as exc:  # torch and numpy raise many types for a damaged or tampered file
        raise UserError(f"{path}: the checkpoint cannot be loaded ({type(exc).__name__}: {exc}); the run cannot be resumed") from None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({exc}); the run cannot be resumed") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} does not hold a checkpoint record; the run cannot be resumed")
    return value


def _tables(run_dir: Path, counts: dict[str, int]) -> dict[str, list[dict]]:
    """The first `counts[name]` rows of each table: the rows of the sessions the checkpoint covers."""
    out = {}
    for name, count in counts.items():
        file = Path(run_dir) / f"{name}.parquet"
        frame = read_parquet(file)
        if len(frame) < count:
            raise UserError(f"{file} holds {len(frame)} rows, its checkpoint expects at least {count}: the run cannot be resumed")
        out[name] = frame.iloc[:count].to_dict("records")
    return out
