"""The generation store: a session's trained generation and its training outcome, kept under a key that digests
everything that determines it, so that the runs of a study (variants, seeds, budgets, reruns) never train the
same generation twice (SPEC section 13).

The key of session t chains: the digest of the training-relevant scenario sections (dataset, stream, model,
training, method, replay, seeds; the gallery's section where training searches the gallery, the evaluation's where
it evaluates anytime), the stream's content, the device kind (and on the CPU torch's thread count: its kernels
round differently on another count, so a generation trained on 1 thread is not what 2 threads train) and the code
(cvstream's source, and a plugin method's module), then per session the key of the session before and, where training reads the gallery (`cvs`'s L_d reads
its class means, validation and anytime points search it), the gallery's content. Two runs that reach the same key
hold the same model, buffer, batching generator and gallery as far as training can tell: the stored generation is
what training would give them, bit for bit on the CPU.

An entry is one file, `<store>/<key[:2]>/<key>.gen`: a JSON header line (format, cvstream and torch versions, the
payload's size and SHA-256), then the payload (`torch.save` of tensors and plain values, read back with
`weights_only=True`). It is written to a temporary file and renamed over the name, so a reader sees a whole entry or
none; two processes that reach the same key at once both train it and both write the same entry. An entry that is
truncated, corrupt or written by another cvstream or torch is reported and trained again, never loaded.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from cvstream.files import atomic_write_bytes

FORMAT = 1
SUFFIX = ".gen"
PACKAGE = Path(__file__).resolve().parents[1]  # the cvstream package folder
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredTraining:
    """What a session's training step left: the network (its spec and weights), the batching generator's state, the
    generation it deploys, the step's outcome (its cost and detail) and its anytime points."""

    generation: int
    model_spec: dict
    model_state: dict[str, torch.Tensor]
    train_generator: torch.Tensor
    outcome: dict
    anytime: list[dict]


class GenerationStore:
    """A folder of stored trainings, shared by every run that names it (processes on one machine, or workers of a
    cluster on a shared file system). `hits`, `misses` and `rejected` count this process's lookups."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.hits = self.misses = self.rejected = 0

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}{SUFFIX}"

    def load(self, key: str) -> StoredTraining | None:
        """The stored training under `key`, or None: absent, or unusable (reported, and left for a new training to
        replace)."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        problem, payload = _check(data)
        if problem is None:
            try:
                payload = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
                stored = StoredTraining(**payload)
            except Exception as exc:  # a payload that passed its checksum yet does not read: written by a bug
                problem = f"unreadable ({type(exc).__name__}: {exc})"
        if problem is not None:
            self.rejected += 1
            self.misses += 1
            log.warning("generation store: %s is %s; training it again", path, problem)
            return None
        self.hits += 1
        return stored

    def save(self, key: str, stored: StoredTraining) -> Path:
        buffer = io.BytesIO()
        torch.save(stored.__dict__, buffer)
        payload = buffer.getvalue()
        header = {"format": FORMAT, "cvstream": cvstream_version(), "torch": torch.__version__, "bytes": len(payload),
                  "sha256": hashlib.sha256(payload).hexdigest()}
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(header, sort_keys=True).encode() + b"\n" + payload)
        return path

    def entries(self) -> list[Path]:
        return sorted(self.folder.glob(f"*/*{SUFFIX}")) if self.folder.is_dir() else []

    def clear(self) -> int:
        """Remove every entry (and temporary files a killed writer left); returns how many entries were removed."""
        removed = 0
        for path in self.entries():
            path.unlink(missing_ok=True)
            removed += 1
        if self.folder.is_dir():
            for leftover in self.folder.glob("*/.*"):
                leftover.unlink(missing_ok=True)
            for sub in self.folder.iterdir():
                if sub.is_dir() and not any(sub.iterdir()):
                    sub.rmdir()
        return removed


def _check(data: bytes) -> tuple[str | None, bytes]:
    """(what is wrong with an entry's bytes or None, its payload)."""
    head, newline, payload = data.partition(b"\n")
    if not newline:
        return "truncated (no header)", b""
    try:
        header = json.loads(head)
    except ValueError:
        return "corrupt (its header is not JSON)", b""
    if header.get("format") != FORMAT:
        return f"of another format ({header.get('format')})", b""
    for name, version in (("cvstream", cvstream_version()), ("torch", torch.__version__)):
        if header.get(name) != version:
            return f"written by {name} {header.get(name)} (this is {version})", b""
    if len(payload) != header.get("bytes"):
        return f"truncated ({len(payload):,} of {header.get('bytes'):,} bytes)", b""
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        return "corrupt (its checksum does not match)", b""
    return None, payload


# -- keys ----------------------------------------------------------------------------------------------


def digest(*parts) -> str:
    """SHA-256 of the parts in order: text, bytes and numpy arrays (their dtype, shape and bytes)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray) and part.dtype == object:  # strings: their text, not the pointers to them
            part = "\x1f".join(map(str, part.tolist()))
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part)
            h.update(f"{part.dtype.str}{part.shape}".encode())
            h.update(part.tobytes())
        elif isinstance(part, bytes):
            h.update(part)
        else:
            h.update(str(part).encode())
        h.update(b"\x00")
    return h.hexdigest()


@cache
def cvstream_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cvstream")
    except PackageNotFoundError:  # run from a source tree without installing: the source is the version
        return f"source-{code_digest()[:12]}"


@cache
def code_digest() -> str:
    """The source of the cvstream package: a change to any module may change what training produces."""
    return digest(*(f"{p.relative_to(PACKAGE)}\n{p.read_text()}" for p in sorted(PACKAGE.rglob("*.py"))))


def module_digest(obj) -> str:
    """The source of the module defining `obj`'s class where it is not cvstream's (a plugin method)."""
    module = inspect.getmodule(type(obj))
    if module is None or module.__name__.startswith("cvstream."):
        return ""
    try:
        return digest(inspect.getsource(module))
    except (OSError, TypeError):
        return digest(module.__name__)


def gallery_digest(gallery) -> str:
    """The gallery as training reads it: every stored vector (at its segment's width), its class, and the index."""
    items = np.arange(len(gallery), dtype=np.int64)
    widths = [int(segment.d) for segment in gallery.segments]
    return digest(json.dumps(gallery.spec.__dict__, sort_keys=True, default=str), widths, gallery.vectors(items),
                  gallery.class_of(items))
