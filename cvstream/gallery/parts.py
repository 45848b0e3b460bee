"""A saved gallery's metadata table as parts: each save writes only the rows that changed since the last one.

`gallery-metadata/part-<session>.parquet` holds the rows one session added and the rows a backfill
or a transform changed (its name: the newest session those rows record); the folder's gallery.json
lists the parts in the order they were written. Read back, the last row of each item wins: one
table, exactly the gallery's `metadata()`. A folder saved by an older cvstream holds one whole
`gallery.parquet` instead, which is still read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cvstream.errors import UserError

PARTS_DIR = "gallery-metadata"
WHOLE_FILE = "gallery.parquet"  # the single table of folders saved before the parts
LIST_KEY = "metadata_parts"  # gallery.json's key of the part list


def part_name(table: pd.DataFrame, taken: set[str]) -> str:
    """The file name of a new part: `part-<newest session in its rows>.parquet`, suffixed -1, -2 ... if taken."""
    sessions = [table[column].max() for column in ("session_added", "backfilled_at", "transformed_at") if len(table)]
    newest = max([int(s) for s in sessions if not pd.isna(s)] or [0])
    name, suffix = f"part-{max(newest, 0):04d}.parquet", 0
    while name in taken:
        suffix += 1
        name = f"part-{max(newest, 0):04d}-{suffix}.parquet"
    return name


def combine(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Parts in the order written -> one table in item-id order, the last row of each item winning."""
    if len(frames) == 1:
        return frames[0]
    table = pd.concat(frames, ignore_index=True)
    return table.drop_duplicates("item_id", keep="last").sort_values("item_id", kind="stable").reset_index(drop=True)


def read_metadata(folder: str | Path, parts: list[str] | None) -> pd.DataFrame:
    """The metadata table of a saved gallery: its listed `parts` combined, or (`parts` None) the whole gallery.parquet.
    A damaged file is a UserError naming it."""
    folder = Path(folder)
    paths = [folder / WHOLE_FILE] if parts is None else [folder / PARTS_DIR / str(name) for name in parts]
    frames = []
    for path in paths:
        try:
            frames.append(pd.read_parquet(path))
        except Exception as exc:  # pyarrow raises several types for a damaged or missing file
            raise UserError(f"{path} cannot be read as Parquet ({type(exc).__name__}: {exc})") from None
    if not frames:
        raise UserError(f"{folder}: gallery.json lists no metadata parts")
    return combine(frames)


def saved_metadata(folder: str | Path) -> pd.DataFrame:
    """The metadata table of a folder a gallery was saved to (a run's folder): from the parts its gallery.json
    lists, else from an older save's gallery.parquet; an empty frame where there is neither."""
    folder = Path(folder)
    info_path = folder / "gallery.json"
    parts = None
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{info_path} cannot be read ({exc}); the file is damaged") from None
        parts = listed_parts(info) if isinstance(info, dict) else None
    if parts is None and not (folder / WHOLE_FILE).is_file():
        return pd.DataFrame()
    return read_metadata(folder, parts)


def listed_parts(info: dict) -> list[str] | None:
    """The part list of a gallery.json (None: an older folder with one gallery.parquet); malformed: a UserError."""
    parts = info.get(LIST_KEY)
    if parts is None:
        return None
    if not isinstance(parts, list) or not all(isinstance(name, str) and "/" not in name for name in parts):
        raise UserError(f"gallery.json: its {LIST_KEY} list is malformed")
    return parts


def changed_since(log: list[tuple[int, np.ndarray]], change: int) -> np.ndarray:
    """The item ids whose metadata the logged changes after `change` touched, sorted, once each."""
    touched = [ids for number, ids in log if number > change]
    return np.unique(np.concatenate(touched)) if touched else np.zeros(0, dtype=np.int64)
