"""Files of a run, each written atomically (temporary file, then rename; the writers live in `cvstream.files`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cvstream.errors import UserError
from cvstream.files import OutputError, atomic_write_bytes, link_or_copy, write_json, write_parquet

__all__ = ["OutputError", "atomic_write_bytes", "link_or_copy", "read_parquet", "write_json", "write_parquet"]


def read_parquet(path: Path) -> pd.DataFrame:
    """A run's table; an empty frame if the file is absent, a user error naming the file if it is damaged."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame()
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path} cannot be read as Parquet ({type(exc).__name__}: {exc}); the file is damaged") from None
