"""The derived-data cache: decoded arrays (memory-mapped .npy) and unpacked archives, never in the data root."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np

from cvstream.errors import DataError


def fingerprint(*paths: Path, extra: str = "") -> str:
    """A short key for the files a decoded array came from: path, size and modification time of each."""
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def cached_array(cache_dir: Path, name: str, build: Callable[[], np.ndarray]) -> np.ndarray:
    """`cache_dir/name.npy` memory-mapped, built once by `build()`; written atomically so a killed run leaves nothing half-made."""
    path = cache_dir / f"{name}.npy"
    if path.is_file():
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, not trusted
    array = np.ascontiguousarray(build())
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npy")
    np.save(tmp, array)
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def unpacked(archive: Path, cache_dir: Path) -> Path:
    """The folder a `.tar.gz` unpacks to, under the cache; unpacked once, in a temporary folder renamed into place."""
    target = cache_dir / "unpacked" / f"{archive.name.split('.')[0]}-{fingerprint(archive)}"
    if target.is_dir():
        return target
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(tmp, filter="data")  # refuses members that would land outside tmp
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot unpack {archive}: {exc}", key_path="dataset.root") from None
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target
