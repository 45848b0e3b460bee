"""Where data sets are read from and where derived files are cached."""

from __future__ import annotations

import os
from pathlib import Path


def data_root(cli_value: str | os.PathLike | None = None) -> Path:
    """--data-root, else $CVSTREAM_DATA, else ~/.cache/cvstream."""
    if cli_value:
        return Path(cli_value).expanduser()
    env = os.environ.get("CVSTREAM_DATA")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/cvstream").expanduser()


def cache_dir() -> Path:
    """$CVSTREAM_CACHE, else ~/.cache/cvstream/derived; never inside the data root."""
    env = os.environ.get("CVSTREAM_CACHE")
    path = Path(env).expanduser() if env else Path("~/.cache/cvstream/derived").expanduser()
    return path


def resolve(root: str, base: Path) -> Path:
    path = Path(root).expanduser()
    return path if path.is_absolute() else base / path


def inside(relative: str, base: Path, *, what: str, key_path: str | None = None) -> Path:
    """`relative` resolved under `base`; refuses a path that leaves it (`..`, absolute elsewhere, links out)."""
    from cvstream.errors import DataError, ScenarioError

    path = Path(relative).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        path.resolve().relative_to(base.resolve())
    except ValueError:
        message = f"{what} {relative!r} leaves {base}; it must name something inside it"
        raise (ScenarioError(message, key_path=key_path) if key_path else DataError(message)) from None
    return path
