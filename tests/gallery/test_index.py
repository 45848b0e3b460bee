"""The gallery's backends: growth, exact replacement, running class sums, persistence, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from cvstream.errors import UserError
from cvstream.gallery import Gallery
from cvstream.scenario import GallerySpec

DIM = 16
SPECS = {
    "flat": GallerySpec(index="flat"),
    "ivf": GallerySpec(index="ivf", nlist=4, nprobe=4),
    "ivfpq": GallerySpec(index="ivfpq", nlist=2, nprobe=2, pq_m=4, pq_bits=4),
    "hnsw": GallerySpec(index="hnsw", hnsw_m=8),
}


def unit(rng, n, dim=DIM):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def filled(kind: str, *, sessions=2, per_session=60, seed=0) -> tuple[Gallery, np.random.Generator]:
    rng = np.random.default_rng(seed)
    gallery = Gallery(DIM, SPECS[kind], seed=seed)
    for t in range(sessions):
        gallery.add(
            unit(rng, per_session), sample_ids=np.arange(t * per_session, (t + 1) * per_session) + 1000,
            class_ids=rng.integers(0, 6, per_session), session=t, generation=t,
        )
    return gallery, rng


def recomputed_means(gallery: Gallery, classes: np.ndarray) -> np.ndarray:
    everything = np.arange(len(gallery))
    stored, owner = gallery.vectors(everything).astype(np.float64), gallery.class_of(everything)
    return np.stack([stored[owner == c].mean(axis=0) for c in classes])


@pytest.mark.parametrize("kind", list(SPECS))
def test_every_backend_finds_its_own_items(kind):
    gallery, _ = filled(kind)
    assert len(gallery) == 120 and gallery.index.ntotal == 120
    stored = gallery.vectors(np.arange(120))
    _, ids = gallery.search(stored, 1)
    assert (ids[:, 0] == np.arange(120)).mean() >= (0.6 if kind == "ivfpq" else 0.95)
    assert list(gallery.metadata().generation) == [0] * 60 + [1] * 60


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_coarse_quantiser_is_trained_once_on_the_first_session_and_recorded(kind):
    gallery, rng = filled(kind, sessions=1)
    centroids = gallery.index.quantizer.reconstruct_n(0, gallery.index.nlist).copy()
    gallery.add(unit(rng, 30), sample_ids=np.arange(30), class_ids=np.zeros(30, int), session=1, generation=1)
    assert np.array_equal(gallery.index.quantizer.reconstruct_n(0, gallery.index.nlist), centroids)
    assert gallery.describe()["trained"] == {"session": 0, "vectors": 60}


def test_training_on_a_seeded_sample():
    spec = GallerySpec(index="ivf", nlist=4, train_size=20)
    gallery = Gallery(DIM, spec, seed=1)
    gallery.add(unit(np.random.default_rng(0), 50), sample_ids=np.arange(50), class_ids=np.zeros(50, int), session=0, generation=0)
    assert gallery.describe()["trained"] == {"session": 0, "vectors": 20}


@pytest.mark.parametrize("kind", list(SPECS))
def test_replace_changes_only_the_chosen_items_and_keeps_class_sums_right(kind):
    gallery, rng = filled(kind)
    before = gallery.vectors(np.arange(120))
    chosen = np.array([3, 70, 71, 119])
    fresh = unit(rng, len(chosen))
    gallery.replace(chosen, fresh, session=2, generation=2)
    after = gallery.vectors(np.arange(120))
    untouched = np.setdiff1d(np.arange(120), chosen)
    assert np.array_equal(after[untouched], before[untouched])  # bit for bit
    if kind != "ivfpq":  # PQ stores codes: what comes back is the decoded approximation
        assert np.array_equal(after[chosen], fresh)
    meta = gallery.metadata()
    assert list(meta.generation[chosen]) == [2] * 4 and list(meta.backfilled_at[chosen]) == [2] * 4
    assert meta.backfilled_at[untouched].isna().all()
    classes = np.unique(gallery.class_of(np.arange(120)))
    means, has = gallery.class_means(classes)
    assert has.all()
    np.testing.assert_allclose(means, recomputed_means(gallery, classes), atol=1e-6)
    _, ids = gallery.search(fresh, 1)
    if kind in ("flat", "hnsw"):
        assert list(ids[:, 0]) == list(chosen)


def test_a_transform_marks_items_without_changing_their_generation():
    gallery, rng = filled("flat")
    gallery.replace(np.array([0, 1]), unit(rng, 2), session=1, transformed=True)
    meta = gallery.metadata()
    assert list(meta.generation[:2]) == [0, 0] and list(meta.transformed_at[:2]) == [1, 1] and meta.backfilled_at.isna().all()


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
    meta.iloc[:-1].to_parquet(tmp_path / "gallery.parquet", index=False)
    with pytest.raises(UserError, match="holds 120 vectors but gallery.parquet lists 119"):
        Gallery.load(tmp_path)
    (tmp_path / "gallery.faiss").unlink()
    with pytest.raises(UserError, match="gallery.faiss missing"):
        Gallery.load(tmp_path)


def test_an_index_that_cannot_hold_the_data_is_a_user_error():
    gallery = Gallery(DIM, GallerySpec(index="ivf", nlist=100))
    with pytest.raises(UserError, match="nlist = 100 needs at least 100 vectors"):
        gallery.require_trainable(60)
    with pytest.raises(UserError, match="nlist = 100"):
        gallery.add(unit(np.random.default_rng(0), 60), sample_ids=np.arange(60), class_ids=np.zeros(60, int), session=0, generation=0)
    with pytest.raises(UserError, match="pq_m = 5 must divide"):
        Gallery(DIM, GallerySpec(index="ivfpq", pq_m=5))
    with pytest.raises(UserError, match="pq_bits = 8 needs at least 256"):
        Gallery(DIM, GallerySpec(index="ivfpq", nlist=2, pq_m=4)).require_trainable(100)


def test_without_faiss_gpu_the_gallery_stays_on_the_cpu():
    import faiss

    gallery, _ = filled("flat")
    assert gallery.gpu == (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_the_gpu_search_replica_answers_like_the_cpu_index(kind, monkeypatch):
    """faiss-gpu stood in for by CPU clones: checks the replica's id handling, not CUDA."""
    import faiss

    import cvstream.gallery.index as index_module

    made = []

    def fake_to_gpu(resources, device, index):
        made.append(type(index).__name__)
        return faiss.clone_index(index)

    monkeypatch.setattr(index_module, "gpu_available", lambda: True)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake_to_gpu, raising=False)
    gallery, rng = filled(kind)
    assert gallery.gpu
    gallery.replace(np.array([2, 90]), unit(rng, 2), session=2, generation=2)
    queries = unit(rng, 20)
    on_gpu = gallery.search(queries, 5)
    gallery.gpu = False
    on_cpu = gallery.search(queries, 5)
    assert np.array_equal(on_gpu[1], on_cpu[1]) and np.allclose(on_gpu[0], on_cpu[0])
    assert made == (["IndexFlatIP"] if kind == "flat" else ["IndexIVFFlat"])  # the flat copy has no id map
