"""Bytes a session writes scale with its new items, not with the gallery (benchmarks/io_per_session.py)."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO


def _benchmark():
    spec = importlib.util.spec_from_file_location("io_per_session", REPO / "benchmarks" / "io_per_session.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("default_segments", [False, True], ids=["a-segment-per-session", "default-segments"])
def test_bytes_written_per_session_do_not_grow_with_the_gallery(default_segments, tmp_path):
    io = _benchmark()
    result = io.measure(small=20, large=300, per_class=20, big_class=300, default_segments=default_segments, work=tmp_path)
    small, large = result["small"], result["large"]
    assert (small["gallery_before"], large["gallery_before"], small["new_items"]) == (120, 1800, 120)
    assert result["ratio"] < 1.3, io.describe(result)
    # the gallery's own files: the same bytes for the same 120 new items, whether 120 or 1,800 were there before
    for kind in ("gallery metadata", "gallery segments"):
        assert abs(large["by_kind"][kind] - small["by_kind"][kind]) <= 0.05 * small["by_kind"][kind], io.describe(result)
    if default_segments:  # one open segment: its file from the first session, the second session's items a delta
        for run in ("small", "large"):
            files = sorted(p.name for p in (tmp_path / run / "run").glob("gallery-0*"))
            assert files == ["gallery-0000-delta-0001.npz", "gallery-0000.faiss"], files


def test_written_counts_new_files_and_not_new_links(tmp_path):
    io = _benchmark()
    (tmp_path / "a").write_bytes(b"x" * 100)
    before = io.files_of(tmp_path)
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "a").hardlink_to(tmp_path / "a")
    (tmp_path / "b.parquet").write_bytes(b"y" * 30)
    assert io.written(before, io.files_of(tmp_path)) == {"tables": 30}
