"""A gallery on disk (cvstream.gallery.store): saved and loaded alike, written again only where it changed (a segment
that only grew, as a delta of its new items), and files that do not agree with each other refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cvstream.errors import UserError
from cvstream.gallery import Gallery
from test_index import DIM, SPECS, filled, shares_one_quantiser, unit


def deltas_in(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("gallery-*-delta-*.npz"))


@pytest.mark.parametrize("kind", list(SPECS))
def test_a_saved_gallery_answers_the_same_queries_with_the_same_ids(kind, tmp_path):
    gallery, rng = filled(kind)
    gallery.replace(np.array([5, 6]), unit(rng, 2), session=1, generation=1)
    queries = unit(rng, 25)
    scores, ids = gallery.search(queries, 5)
    gallery.save(tmp_path)
    loaded = Gallery.load(tmp_path)
    again_scores, again_ids = loaded.search(queries, 5)
    assert np.array_equal(again_ids, ids)
    np.testing.assert_array_equal(again_scores, scores)
    assert loaded.metadata().equals(gallery.metadata())
    assert loaded.describe() == gallery.describe()
    np.testing.assert_allclose(loaded.class_means(np.arange(6))[0], gallery.class_means(np.arange(6))[0], atol=1e-6)
    loaded.add(unit(rng, 3), sample_ids=np.arange(3), class_ids=np.zeros(3, int), session=2, generation=2)  # and it grows on
    assert len(loaded) == 123


def test_a_saved_gallery_that_does_not_match_its_metadata_is_a_user_error(tmp_path):
    gallery, _ = filled("flat")
    gallery.save(tmp_path)
    meta = gallery.metadata()
    meta.iloc[:-1].to_parquet(tmp_path / "gallery-metadata" / "part-0001.parquet", index=False)  # its one part
    with pytest.raises(UserError, match="segments hold 120 vectors but gallery-metadata/ lists 119"):
        Gallery.load(tmp_path)
    (tmp_path / "gallery-0000.faiss").unlink()
    with pytest.raises(UserError, match="gallery-0000.faiss missing"):
        Gallery.load(tmp_path)


@pytest.mark.parametrize("kind", ["ivf/segments", "ivfpq/segments", "hnsw/segments", "flat/segments"])
def test_a_loaded_segmented_gallery_answers_alike_shares_the_quantiser_and_grows_on(kind, tmp_path):
    gallery, rng = filled(kind)
    gallery.save(tmp_path)
    loaded = Gallery.load(tmp_path)
    queries = unit(rng, 25)
    assert np.array_equal(loaded.search(queries, 5)[1], gallery.search(queries, 5)[1])
    assert np.array_equal(loaded.vectors(np.arange(120)), gallery.vectors(np.arange(120)))
    if loaded.quantizer is not None:
        assert shares_one_quantiser(loaded)
    loaded.add(unit(rng, 40), sample_ids=np.arange(40), class_ids=np.zeros(40, int), session=2, generation=2)
    assert [s.ntotal for s in loaded.segments] == [50, 50, 50, 10]
    if loaded.quantizer is not None:
        assert shares_one_quantiser(loaded)


def test_a_save_to_a_second_folder_links_the_files_already_written(tmp_path):
    gallery, rng = filled("flat/segments")
    gallery.save(tmp_path / "run")
    gallery.save(tmp_path / "copy")  # as a checkpoint does, just after the run's own save
    for name in ["gallery-0000.faiss", "gallery-0001.faiss", "gallery-0002.faiss", "gallery-metadata/part-0001.parquet"]:
        assert (tmp_path / "copy" / name).stat().st_ino == (tmp_path / "run" / name).stat().st_ino
    gallery.add(unit(rng, 5), sample_ids=np.arange(5), class_ids=np.zeros(5, int), session=2, generation=2)
    gallery.save(tmp_path / "run")  # a new version of the newest segment: the copy keeps the old one
    assert Gallery.load(tmp_path / "copy").metadata().equals(filled("flat/segments")[0].metadata())
    assert len(Gallery.load(tmp_path / "run")) == 125


def test_saving_again_writes_only_the_segments_that_changed(tmp_path):
    gallery, rng = filled("flat/segments")
    gallery.save(tmp_path)
    files = [tmp_path / f"gallery-{i:04d}.faiss" for i in range(3)]
    inode = [f.stat().st_ino for f in files]
    gallery.add(unit(rng, 10), sample_ids=np.arange(10), class_ids=np.zeros(10, int), session=2, generation=2)
    gallery.save(tmp_path)
    assert [f.stat().st_ino for f in files] == inode  # the grown segment keeps its file: its 10 new items are a delta
    assert deltas_in(tmp_path) == ["gallery-0002-delta-0001.npz"]
    gallery.replace(np.array([7]), unit(rng, 1), session=2, generation=2)
    gallery.save(tmp_path)
    assert [f.stat().st_ino for f in files] != inode and [f.stat().st_ino for f in files[1:]] == inode[1:]
    loaded = Gallery.load(tmp_path)
    assert np.array_equal(loaded.vectors(np.arange(130)), gallery.vectors(np.arange(130)))
    inode = [f.stat().st_ino for f in files]
    loaded.save(tmp_path)  # a loaded gallery has written nothing yet: it writes every segment, whole
    assert all(f.stat().st_ino != i for f, i in zip(files, inode)) and deltas_in(tmp_path) == []
    (tmp_path / "gallery-0007.faiss").write_bytes(b"left over")
    loaded.save(tmp_path)
    assert not (tmp_path / "gallery-0007.faiss").exists()
    other, _ = filled("flat/segments", seed=5)  # another gallery writes over the files
    other.save(tmp_path)
    loaded.save(tmp_path)  # so this one must write its own again, though it changed nothing
    assert np.array_equal(Gallery.load(tmp_path).vectors(np.arange(130)), loaded.vectors(np.arange(130)))


def test_segments_that_do_not_fit_the_saved_description_are_a_user_error(tmp_path):
    import faiss

    gallery, _ = filled("flat/segments")
    gallery.save(tmp_path)
    faiss.write_index(faiss.IndexFlatIP(DIM), str(tmp_path / "gallery-0001.faiss"))  # an empty middle segment
    with pytest.raises(UserError, match=r"gallery-0001.faiss: 45 bytes, gallery.json says \d+ bytes .* from another save"):
        Gallery.load(tmp_path)
    info = json.loads((tmp_path / "gallery.json").read_text())  # as saved before the checksums: checked for what they hold
    for entry in info["segments"]:
        del entry["bytes"], entry["crc32"]
    (tmp_path / "gallery.json").write_text(json.dumps({**info, "format_version": 2}))
    with pytest.raises(UserError, match="gallery-0001.faiss holds 0 items; segments hold 50"):
        Gallery.load(tmp_path)
    faiss.write_index(faiss.IndexFlatL2(DIM), str(tmp_path / "gallery-0001.faiss"))
    with pytest.raises(UserError, match="not the inner-product flat index"):
        Gallery.load(tmp_path)
    faiss.write_index(faiss.IndexFlatIP(DIM * 2), str(tmp_path / "gallery-0001.faiss"))
    with pytest.raises(UserError, match="holds 32-d vectors, gallery.json says 16"):
        Gallery.load(tmp_path)


def test_the_stores_functions_are_what_gallery_save_and_load_do(tmp_path):
    from cvstream.gallery import store

    gallery, rng = filled("ivf/segments")
    store.save(gallery, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*(store.segment_file(i) for i in range(3)), store.INFO_FILE, "gallery-metadata"])
    loaded = store.load(tmp_path, class_sums=gallery.class_sums())
    assert isinstance(loaded, Gallery) and store.describe(loaded) == gallery.describe() == loaded.describe()
    assert loaded.metadata().equals(Gallery.load(tmp_path).metadata())


# -- deltas: a segment that only grew keeps its file, and a save writes its new items next to it -------------------


def add_session(gallery: Gallery, batch: tuple[np.ndarray, np.ndarray], session: int) -> None:
    vectors, classes = batch
    gallery.add(vectors, sample_ids=np.arange(len(vectors)) + 100 * session, class_ids=classes, session=session, generation=session)


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt  # a save killed at this point


def assert_same(loaded: Gallery, gallery: Gallery, queries: np.ndarray) -> None:
    """The same segments byte for byte, the same answers, metadata and description."""
    import faiss

    assert [faiss.serialize_index(s).tobytes() for s in loaded.segments] == [faiss.serialize_index(s).tobytes() for s in gallery.segments]
    for got, expected in zip(loaded.search(queries, 5), gallery.search(queries, 5)):
        np.testing.assert_array_equal(got, expected)
    assert np.array_equal(loaded.vectors(np.arange(len(gallery))), gallery.vectors(np.arange(len(gallery))))
    assert loaded.metadata().equals(gallery.metadata()) and loaded.describe() == gallery.describe()
    if gallery.quantizer is not None:
        assert shares_one_quantiser(loaded)


@pytest.mark.parametrize("kind", list(SPECS))
def test_a_gallery_saved_every_session_with_deltas_loads_as_it_is_in_memory(kind, tmp_path):
    gallery, rng = filled(kind, sessions=1)  # 60 items: one segment, or 50 + 10
    queries = unit(rng, 20)
    batches = {session: (unit(rng, 7), rng.integers(0, 6, 7)) for session in range(1, 8)}
    run, written = tmp_path / "run", set()
    for session, batch in batches.items():
        add_session(gallery, batch, session)
        if session == 5:
            gallery.replace(np.array([3, 55]), unit(rng, 2), session=session, generation=session)  # a backfill: written whole
        gallery.save(run)
        checkpoint = tmp_path / f"checkpoint-{session}"  # a fresh folder every session, as a checkpoint's
        gallery.save(checkpoint)
        written |= set(deltas_in(run))
        assert deltas_in(checkpoint) == deltas_in(run)
        assert_same(Gallery.load(run), gallery, queries)
        assert_same(Gallery.load(checkpoint, class_sums=gallery.class_sums()), gallery, queries)
    assert bool(written) == (not kind.startswith("hnsw"))  # an hnsw segment is always written whole
    if not kind.startswith("hnsw"):  # (a loaded hnsw graph draws its new nodes' levels afresh: it grows another graph)
        resumed = Gallery.load(tmp_path / "checkpoint-6")
        add_session(resumed, batches[7], 7)  # grows on from the checkpoint as the gallery did
        assert_same(resumed, gallery, queries)


def test_deltas_give_way_to_the_whole_segment_once_they_outgrow_it_or_it_changes_otherwise(tmp_path, monkeypatch):
    from cvstream.gallery import store

    gallery, rng = filled("ivfpq", sessions=1)  # one segment of 60 items

    def listed() -> list[dict]:
        return json.loads((tmp_path / "gallery.json").read_text())["segments"][0].get("deltas", [])

    gallery.save(tmp_path)
    base = (tmp_path / "gallery-0000.faiss").stat().st_ino
    for n in (30, 30):
        add_session(gallery, (unit(rng, n), np.zeros(n, int)), 1)
        gallery.save(tmp_path)
    assert deltas_in(tmp_path) == ["gallery-0000-delta-0001.npz", "gallery-0000-delta-0002.npz"]
    assert [(d["file"], d["start"], d["items"]) for d in listed()] == [("gallery-0000-delta-0001.npz", 60, 30), ("gallery-0000-delta-0002.npz", 90, 30)]
    assert (tmp_path / "gallery-0000.faiss").stat().st_ino == base and listed()[0]["bytes"] == (tmp_path / listed()[0]["file"]).stat().st_size
    add_session(gallery, (unit(rng, 1), np.zeros(1, int)), 2)  # 61 items of deltas over a file of 60: written whole
    gallery.save(tmp_path)
    assert (tmp_path / "gallery-0000.faiss").stat().st_ino != base and deltas_in(tmp_path) == [] and listed() == []
    add_session(gallery, (unit(rng, 10), np.zeros(10, int)), 3)
    gallery.save(tmp_path)
    assert deltas_in(tmp_path) == ["gallery-0000-delta-0001.npz"]
    gallery.replace(np.array([0]), unit(rng, 1), session=3, generation=3)  # re-encoded in place: written whole
    gallery.save(tmp_path)
    assert deltas_in(tmp_path) == [] and Gallery.load(tmp_path).metadata().equals(gallery.metadata())
    monkeypatch.setattr(store, "MAX_DELTAS", 2)
    for n in (1, 1, 1):
        add_session(gallery, (unit(rng, n), np.zeros(n, int)), 4)
        gallery.save(tmp_path)
    assert deltas_in(tmp_path) == [] and len(Gallery.load(tmp_path)) == len(gallery) == 134  # the third: whole again


def test_a_delta_truncated_damaged_missing_or_from_another_save_is_refused_at_load(tmp_path, monkeypatch):
    from cvstream.gallery import store

    gallery, rng = filled("ivf/segments", sessions=1)  # 50 + 10
    gallery.save(tmp_path)
    add_session(gallery, (unit(rng, 8), np.zeros(8, int)), 1)
    gallery.save(tmp_path)
    delta = tmp_path / "gallery-0001-delta-0001.npz"
    data = delta.read_bytes()
    delta.write_bytes(data[:-100])
    with pytest.raises(UserError, match=r"gallery-0001-delta-0001.npz: \d+ bytes, gallery.json says \d+ bytes .*the delta is truncated"):
        Gallery.load(tmp_path)
    delta.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(UserError, match="gallery-0001-delta-0001.npz: another checksum.*the delta is truncated, damaged"):
        Gallery.load(tmp_path)
    delta.unlink()
    with pytest.raises(UserError, match="gallery-0001-delta-0001.npz missing"):
        Gallery.load(tmp_path)
    delta.write_bytes(data)
    assert len(Gallery.load(tmp_path)) == 68
    gallery.replace(np.array([55]), unit(rng, 1), session=1, generation=1)  # the segment written whole ...
    with monkeypatch.context() as killed:  # ... by a save killed before it wrote gallery.json
        killed.setattr(store, "write_json", interrupt)
        with pytest.raises(KeyboardInterrupt):
            gallery.save(tmp_path)
    with pytest.raises(UserError, match=r"gallery-0001.faiss: \d+ bytes, gallery.json says \d+ bytes .* from another save than gallery.json"):
        Gallery.load(tmp_path)
    info = json.loads((tmp_path / "gallery.json").read_text())
    del info["segments"][1]["crc32"], info["segments"][1]["bytes"]  # without its checksum, the deltas still do not fit
    (tmp_path / "gallery.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="gallery-0001.faiss and its deltas hold 18 items, its delta gallery-0001-delta-0001.npz starts at 10"):
        Gallery.load(tmp_path)


def test_a_save_killed_before_its_gallery_json_leaves_the_previous_save_loadable(tmp_path, monkeypatch):
    from cvstream.gallery import store

    gallery, rng = filled("flat", sessions=1)
    gallery.save(tmp_path)
    before = gallery.metadata()
    add_session(gallery, (unit(rng, 8), np.zeros(8, int)), 1)

    monkeypatch.setattr(store, "write_json", interrupt)
    with pytest.raises(KeyboardInterrupt):
        gallery.save(tmp_path)
    assert deltas_in(tmp_path) == ["gallery-0000-delta-0001.npz"]  # written, not yet listed
    assert Gallery.load(tmp_path).metadata().equals(before)
    monkeypatch.undo()
    gallery.save(tmp_path)
    assert Gallery.load(tmp_path).metadata().equals(gallery.metadata())


def test_a_folder_of_the_format_before_deltas_still_loads(tmp_path):
    gallery, _ = filled("ivf/segments")
    gallery.save(tmp_path)
    info = json.loads((tmp_path / "gallery.json").read_text())
    (tmp_path / "gallery.json").write_text(json.dumps({**info, "format_version": 2}))
    assert Gallery.load(tmp_path).metadata().equals(gallery.metadata())


def test_a_checkpoint_links_a_segment_and_its_deltas_and_keeps_them_while_the_run_moves_on(tmp_path):
    gallery, rng = filled("ivf", sessions=1)
    gallery.save(tmp_path / "run")
    add_session(gallery, (unit(rng, 20), np.zeros(20, int)), 1)
    gallery.save(tmp_path / "run")
    gallery.save(tmp_path / "checkpoint")
    names = ["gallery-0000.faiss", "gallery-0000-delta-0001.npz"]
    assert all((tmp_path / "checkpoint" / n).stat().st_ino == (tmp_path / "run" / n).stat().st_ino for n in names)
    kept = gallery.metadata()
    add_session(gallery, (unit(rng, 50), np.zeros(50, int)), 2)  # outgrows the deltas: the run writes the segment whole
    gallery.save(tmp_path / "run")
    assert deltas_in(tmp_path / "run") == [] and Gallery.load(tmp_path / "checkpoint").metadata().equals(kept)


def test_a_run_resumed_from_a_checkpoint_with_deltas_writes_what_the_uninterrupted_run_writes(tmp_path):
    """An ivfpq gallery with a delta at the checkpoint the run resumes from (default segment size: one open segment)."""
    import pandas as pd

    from conftest import killed_mid_session, run_until_killed, tiny_dict
    from cvstream import cli
    from cvstream.scenario import Scenario
    from cvstream.simulator import Simulator, load_run
    from cvstream.simulator.checkpoint import latest

    scenario = tiny_dict(gallery={"index": "ivfpq", "nlist": 4, "nprobe": 2, "pq_m": 4, "pq_bits": 4}, evaluation={"probe_items": 30})
    Simulator(Scenario.from_dict(scenario), out_dir=tmp_path / "whole").run()
    killed = tmp_path / "killed"
    run_until_killed(killed_mid_session(scenario, deployed=1), str(killed))
    assert latest(killed)["session"] == 1
    assert deltas_in(killed / "checkpoint" / "session-1" / "gallery") == ["gallery-0000-delta-0001.npz"]
    assert cli.main(["run", "--resume", str(killed), "--no-progress"]) == 0
    for name in ("metrics", "costs"):
        a, b = (pd.read_parquet(run / f"{name}.parquet").drop(columns="run_id", errors="ignore") for run in (tmp_path / "whole", killed))
        key = list(a.columns) if name == "metrics" else ["session", "phase", "backbone_forwards", "transform_forwards", "items"]
        pd.testing.assert_frame_equal(a[key], b[key])
    pd.testing.assert_frame_equal(load_run(tmp_path / "whole").gallery, load_run(killed).gallery)
    whole, resumed = Gallery.load(tmp_path / "whole"), Gallery.load(killed)
    assert np.array_equal(whole.vectors(np.arange(len(whole))), resumed.vectors(np.arange(len(resumed))))
