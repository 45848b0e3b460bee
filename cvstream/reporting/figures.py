"""Saving the reports' figures: rendered in memory, then written atomically (a killed report leaves no half a PNG)."""

from __future__ import annotations

import io
from pathlib import Path

from cvstream.files import atomic_write_bytes


def pyplot():
    """matplotlib.pyplot on the Agg backend: figures go to files only, never to a window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, *, dpi: float = 110) -> Path:
    """Lay out `fig`, render it (the format from the file's suffix), write it to `path` through a temporary file in
    the same folder renamed over it, and close the figure, whether or not that succeeded."""
    path = Path(path)
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    finally:
        pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
