"""A gallery on disk (cvstream.gallery.store): saved and loaded alike, written again only where it changed, and
files that do not agree with each other refused."""

from __future__ import annotations

import numpy as np
import pytest

from cvstream.errors import UserError
from cvstream.gallery import Gallery
from test_index import DIM, SPECS, filled, shares_one_quantiser, unit


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
    assert [f.stat().st_ino for f in files[:2]] == inode[:2] and files[2].stat().st_ino != inode[2]
    inode = [f.stat().st_ino for f in files]
    gallery.replace(np.array([7]), unit(rng, 1), session=2, generation=2)
    gallery.save(tmp_path)
    assert [f.stat().st_ino for f in files] != inode and [f.stat().st_ino for f in files[1:]] == inode[1:]
    loaded = Gallery.load(tmp_path)
    assert np.array_equal(loaded.vectors(np.arange(130)), gallery.vectors(np.arange(130)))
    inode = [f.stat().st_ino for f in files]
    loaded.save(tmp_path)  # a loaded gallery has written nothing yet: it writes every segment
    assert all(f.stat().st_ino != i for f, i in zip(files, inode))
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
