"""Figures are written atomically: a save that fails leaves the previous file, or none, and no partial file."""

from __future__ import annotations

import os

import pytest

from cvstream.files import OutputError
from cvstream.reporting.figures import pyplot, save_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _figure():
    fig, ax = pyplot().subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    return fig


def test_a_saved_figure_is_a_png_and_the_figure_is_closed(tmp_path):
    fig = _figure()
    path = save_figure(fig, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert not pyplot().fignum_exists(fig.number)
    assert os.listdir(tmp_path) == ["plot.png"]


def test_a_failing_write_keeps_the_previous_file_and_leaves_no_partial_one(tmp_path, monkeypatch):
    path = tmp_path / "plot.png"
    path.write_bytes(b"the previous plot")

    def no_rename(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OutputError, match="No space left on device"):
        save_figure(_figure(), path)
    assert path.read_bytes() == b"the previous plot"
    assert os.listdir(tmp_path) == ["plot.png"]  # no temporary file left behind


def test_a_figure_that_fails_to_render_writes_nothing(tmp_path):
    fig = _figure()

    def half_written(target, **kwargs):
        target.write(PNG_SIGNATURE)  # some bytes, then the renderer fails
        raise RuntimeError("the renderer failed")

    fig.savefig = half_written
    with pytest.raises(RuntimeError, match="the renderer failed"):
        save_figure(fig, tmp_path / "plot.png")
    assert os.listdir(tmp_path) == []
    assert not pyplot().fignum_exists(fig.number)
