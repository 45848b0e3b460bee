"""Files written atomically (a temporary file, fsync, then rename), for every package that writes one.

A killed process leaves either the previous file or the new one, never half of one. The
gallery and the simulator both write through these; `cvstream.simulator.outputs` re-exports them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from cvstream.errors import UserError


class OutputError(UserError):
    """A run's file could not be written (full disk, permissions); completed files are untouched."""


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _atomic(path: Path, write) -> None:
    """Write through `write(tmp)`, fsync, rename; on failure remove the temporary file and say why."""
    tmp = _tmp(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        reason = exc.strerror or str(exc)
        raise OutputError(f"cannot write {path}: {reason}; the files of completed sessions are intact") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def link_or_copy(source: Path, path: Path) -> None:
    """Make `path` a hard link to `source` (atomically); where links are not supported, a copy.

    Safe because every writer here replaces a file by rename, never in place: the linked
    content stays what it was when linked.
    """
    tmp = _tmp(Path(path))
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write_bytes(path, Path(source).read_bytes())


def write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n").encode())


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    _atomic(Path(path), lambda tmp: frame.to_parquet(tmp, index=False))
