"""Resume: the state of a run at the end of each completed session, saved atomically.

`checkpoint/session-<t>/` holds the models and torch generators (`state.pt`, read back
with `weights_only=True`), the replay buffer, evaluation state and the gallery's running
class sums as arrays (`arrays.npz`) and plain values (`state.json`), and the gallery as a
saved gallery folder (`gallery/`, read back with `Gallery.load`), whose files are hard
links to the run's own gallery files of that session: the run replaces a changed file by
renaming a new one over it, so the link keeps the session's version, and a checkpoint
costs the gallery's new segments, not the gallery. `checkpoint/latest.json`, written last,
names the newest complete one. Table rows are not copied: the run's Parquet files are
append-only, so a resumed run keeps their first rows up to the counts saved here.
"""

from __future__ import annotations

import copy
import importlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from cvstream.errors import UserError
from cvstream.gallery.index import Gallery
from cvstream.simulator.outputs import OutputError, atomic_write_bytes, read_parquet, write_json

CHECKPOINT_VERSION = 2  # 2: the gallery is a saved gallery folder (hard links to the run's own files)
SCALARS = ("generation", "_next_generation")  # engine attributes that carry over between sessions
STRUCTURES = ("replay",)  # engine objects saved attribute by attribute
GALLERY = "gallery"  # the checkpoint's gallery folder: Gallery.save, hard-linked from the run's files where unchanged


# -- objects as arrays and plain values (a small, closed alternative to pickle) -------------


def pack(obj, prefix: str, arrays: dict[str, np.ndarray]) -> dict:
    """Describe `obj`'s attributes as JSON values; arrays go into `arrays`."""
    fields = {}
    for name, value in vars(obj).items():
        key = f"{prefix}.{name}"
        if isinstance(value, np.ndarray):
            arrays[key] = value
            fields[name] = {"array": key}
        elif isinstance(value, dict) and all(isinstance(v, np.ndarray) for v in value.values()):
            for k, v in value.items():
                arrays[f"{key}[{k}]"] = v
            fields[name] = {"arrays": {json.dumps(k): f"{key}[{k}]" for k in value}}
        elif value is None or isinstance(value, (bool, int, float, str, np.integer, np.floating)):
            fields[name] = {"value": value.item() if isinstance(value, np.generic) else value}
        elif type(value).__module__.startswith("cvstream.") and hasattr(value, "__dict__"):
            fields[name] = {"object": pack(value, key, arrays)}
        else:
            raise TypeError(f"cannot checkpoint {type(obj).__name__}.{name} of type {type(value).__name__}")
    return {"class": f"{type(obj).__module__}:{type(obj).__qualname__}", "fields": fields}


def unpack(spec: dict, arrays) -> object:
    module, _, qualname = str(spec["class"]).partition(":")
    # A checkpoint is data: it may only name cvstream's own classes, never an arbitrary module.
    if not (module == "cvstream" or module.startswith("cvstream.")) or not qualname.isidentifier():
        raise UserError(f"the checkpoint names the class {spec['class']!r}, which is not one of cvstream's; refusing to load it")
    cls = getattr(importlib.import_module(module), qualname, None)
    if not isinstance(cls, type):
        raise UserError(f"the checkpoint names the class {spec['class']!r}, which does not exist in this cvstream")
    obj = cls.__new__(cls)
    for name, field in spec["fields"].items():
        if "array" in field:
            value = np.array(arrays[field["array"]])
        elif "arrays" in field:
            value = {json.loads(k): np.array(arrays[v]) for k, v in field["arrays"].items()}
        elif "object" in field:
            value = unpack(field["object"], arrays)
        else:
            value = field["value"]
        setattr(obj, name, value)
    return obj


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


# -- save and restore ----------------------------------------------------------------------


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoint"


def save(sim, session: int) -> None:
    """Save everything a resumed run needs to continue after `session`, then point latest.json at it."""
    root = checkpoint_dir(sim.run_dir)
    folder = root / f"session-{session}"
    try:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"cannot create {folder}: {exc.strerror or exc}; the files of completed sessions are intact") from None
    tensors, arrays, values = {}, {}, {"version": CHECKPOINT_VERSION, "session": session, "numpy_generators": {}}
    for name, value in vars(sim).items():
        if isinstance(value, torch.nn.Module):
            tensors[f"module:{name}"] = {k: v.detach().cpu() for k, v in value.state_dict().items()}
        elif isinstance(value, torch.Generator):
            tensors[f"generator:{name}"] = value.get_state()
        elif isinstance(value, np.random.Generator):
            values["numpy_generators"][name] = value.bit_generator.state
    values["scalars"] = {name: getattr(sim, name) for name in SCALARS if hasattr(sim, name)}
    values["structures"] = {name: pack(getattr(sim, name), name, arrays) for name in STRUCTURES}
    # The gallery as saved files (the run's own gallery was just saved: its files are linked, not copied),
    # plus its running class sums, which a reload would otherwise recompute with different rounding.
    sim.gallery.save(folder / GALLERY)
    arrays["gallery.class_sum"], arrays["gallery.class_count"] = sim.gallery.class_sums()
    evaluation_arrays, values["evaluator"] = sim.evaluator.state()
    arrays.update({f"evaluator.{k}": v for k, v in evaluation_arrays.items()})
    values["rows"] = dict(sim.recorder.committed)
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


def restore(sim) -> int:
    """Bring a freshly set-up simulator to the end of the last saved session; returns the next session."""
    pointer = latest(sim.run_dir)
    if pointer is None:
        sim.recorder.restore(_tables(sim.run_dir, {"metrics": 0, "costs": 0, "events": 0}))
        return 0
    folder = checkpoint_dir(sim.run_dir) / str(pointer.get("folder"))
    values = _read_json(folder / "state.json")
    tensors = _load(folder / "state.pt", lambda path: torch.load(path, weights_only=True, map_location="cpu"))
    arrays = _load(folder / "arrays.npz", _read_npz)
    load_model_state(sim.model, tensors["module:model"])
    for key, state in tensors.items():
        kind, _, name = key.partition(":")
        if kind == "generator":
            getattr(sim, name).set_state(state)
        elif kind == "module" and name != "model":
            module = getattr(sim, name, None)
            if module is not None:
                load_model_state(module, state)
                continue
            module = copy.deepcopy(sim.model)  # a frozen copy of the model, as the previous generation is
            load_model_state(module, state)
            setattr(sim, name, module.eval().requires_grad_(False))
    for name, state in values["numpy_generators"].items():
        getattr(sim, name).bit_generator.state = state
    for name, value in values["scalars"].items():
        setattr(sim, name, value)
    for name, spec in values["structures"].items():
        setattr(sim, name, unpack(spec, arrays))
    if "gallery.class_sum" not in arrays or "gallery.class_count" not in arrays:
        raise UserError(f"{folder / 'arrays.npz'} lacks the gallery's class sums; the run cannot be resumed")
    sim.gallery = Gallery.load(folder / GALLERY, class_sums=(arrays["gallery.class_sum"], arrays["gallery.class_count"]))
    prefix = "evaluator."
    sim.evaluator.restore({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}, values["evaluator"])
    sim.recorder.restore(_tables(sim.run_dir, values["rows"]))
    return int(values["session"]) + 1


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
