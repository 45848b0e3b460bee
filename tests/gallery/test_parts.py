"""The gallery's metadata on disk as per-session parts: what each part holds, and that reading them back gives
the one table the gallery holds in memory (and that a run of the older single-file layout still loads)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from conftest import tiny_scenario
from cvstream.gallery import Gallery
from cvstream.gallery.parts import PARTS_DIR, combine
from cvstream.simulator import Hook, Simulator, load_run


class Metadata(Hook):
    """The gallery's metadata in memory at the end of every session."""

    def __init__(self):
        self.tables: list[pd.DataFrame] = []

    def after_session(self, sim, session: int) -> None:
        self.tables.append(sim.gallery.metadata())


@pytest.fixture(scope="module", params=[{"policy": "partial", "budget": 0.5, "order": "random"}, {"policy": "transform", "epochs": 2}],
                ids=["partial", "transform"])
def backfilled_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("parts") / "run"
    hook = Metadata()
    Simulator(tiny_scenario(backfill=request.param, evaluation={"probe_items": 0}), out_dir=out, hooks=[hook]).run()
    return out, hook.tables


def test_reading_the_parts_back_gives_the_gallery_metadata(backfilled_run):
    out, tables = backfilled_run
    changed = tables[-1].backfilled_at.notna() | tables[-1].transformed_at.notna()
    assert changed.any()  # the backfill did change rows of earlier sessions
    pd.testing.assert_frame_equal(load_run(out).gallery, tables[-1])
    assert Gallery.load(out).metadata().equals(tables[-1])


def test_each_part_holds_the_rows_its_session_added_or_changed(backfilled_run):
    out, tables = backfilled_run
    listed = json.loads((out / "gallery.json").read_text())["metadata_parts"]
    assert listed == [f"part-{t:04d}.parquet" for t in range(len(tables))]
    for t, name in enumerate(listed):
        part = pd.read_parquet(out / PARTS_DIR / name)
        final = tables[t]
        touched = (final.session_added == t) | (final.backfilled_at == t).fillna(False) | (final.transformed_at == t).fillna(False)
        assert part.item_id.tolist() == final.item_id[touched].tolist()
        pd.testing.assert_frame_equal(part, final[touched].reset_index(drop=True))  # the rows as they were at session t
        # the parts up to t are the table of session t: the last row of an item wins
        parts = [pd.read_parquet(out / PARTS_DIR / n) for n in listed[: t + 1]]
        pd.testing.assert_frame_equal(combine(parts), final)


def test_a_run_with_one_whole_gallery_parquet_still_loads(backfilled_run, tmp_path):
    out, tables = backfilled_run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    shutil.rmtree(old / PARTS_DIR)
    tables[-1].to_parquet(old / "gallery.parquet", index=False)  # the layout of runs before the parts
    info = json.loads((old / "gallery.json").read_text())
    del info["metadata_parts"]
    (old / "gallery.json").write_text(json.dumps(info))
    pd.testing.assert_frame_equal(load_run(old).gallery, tables[-1])
    assert Gallery.load(old).metadata().equals(tables[-1])
    # saving into such a folder replaces the whole table by parts
    gallery = Gallery.load(old)
    gallery.save(old)
    assert not (old / "gallery.parquet").exists() and load_run(old).gallery.equals(tables[-1])


def test_a_second_save_without_changes_writes_no_part_and_a_new_folder_links_the_parts(backfilled_run, tmp_path):
    out, tables = backfilled_run
    gallery = Gallery.load(out)
    gallery.save(tmp_path / "a")  # a loaded gallery's first save: one part of all rows
    assert sorted(p.name for p in (tmp_path / "a" / PARTS_DIR).iterdir()) == [f"part-{len(tables) - 1:04d}.parquet"]
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "a" / PARTS_DIR).iterdir()}
    gallery.save(tmp_path / "a")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "a" / PARTS_DIR).iterdir()} == before
    gallery.save(tmp_path / "b")
    (name,) = before
    assert (tmp_path / "b" / PARTS_DIR / name).stat().st_ino == (tmp_path / "a" / PARTS_DIR / name).stat().st_ino
