"""Memory of a run: resident set size now and at its peak, and the bytes the gallery holds.

Long streams should cost memory that the gallery explains: everything else (models,
replay, class means, evaluation state) stays bounded. `session_end` events carry these
figures, so a run's events.parquet shows whether memory stayed flat.
"""

from __future__ import annotations

import resource
import sys

import faiss
import numpy as np


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * resource.getpagesize()


def peak_rss_bytes() -> int:
    """Highest resident set size of this process since the last `reset_peak` (or since it started)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports kilobytes


def reset_peak() -> bool:
    """Start a new peak (Linux: VmHWM := current RSS), so each session's peak is its own; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def index_bytes(index: faiss.Index) -> int:
    """Bytes a Faiss index holds for its vectors, ids and graph links (an estimate without serialising)."""
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        inner = faiss.downcast_index(index.index)
        return index_bytes(inner) + 8 * index.ntotal * (2 if isinstance(index, faiss.IndexIDMap2) else 1)
    n = int(index.ntotal)
    if isinstance(index, faiss.IndexHNSW):
        links = faiss.vector_to_array(index.hnsw.neighbors).nbytes if n else 0
        return index_bytes(index.storage) + links
    if isinstance(index, faiss.IndexIVF):
        # codes + ids per item and a direct map entry per item (the coarse centroids are shared by the segments)
        return n * (index.code_size + 8 + 8)
    if isinstance(index, faiss.IndexFlatCodes):
        return n * index.code_size
    return n * index.d * 4


def gallery_bytes(gallery) -> int:
    """The index plus the metadata columns (their allocated capacity) and the per-class sums."""
    columns = sum(value._data.nbytes for value in vars(gallery).values() if hasattr(value, "_data") and isinstance(value._data, np.ndarray))
    sums = gallery._class_sum.nbytes + gallery._class_count.nbytes
    quantizer = gallery.quantizer.ntotal * gallery.dim * 4 if gallery.quantizer is not None else 0  # shared by the IVF segments
    return sum(index_bytes(segment) for segment in gallery.segments) + quantizer + columns + sums


def snapshot(gallery=None) -> dict[str, int]:
    """The figures a session_end event records."""
    out = {"rss_bytes": rss_bytes(), "peak_rss_bytes": peak_rss_bytes()}
    if gallery is not None:
        out["gallery_bytes"] = gallery_bytes(gallery)
    return out
