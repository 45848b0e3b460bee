"""The gallery's backends: growth, exact replacement, running class sums, search over segments, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from cvstream.errors import UserError
from cvstream.gallery import Gallery
from cvstream.scenario import GallerySpec

DIM = 16
ONE_SEGMENT = {
    "flat": GallerySpec(index="flat"),
    "ivf": GallerySpec(index="ivf", nlist=4, nprobe=4),
    "ivfpq": GallerySpec(index="ivfpq", nlist=2, nprobe=2, pq_m=4, pq_bits=4),
    "hnsw": GallerySpec(index="hnsw", hnsw_m=8),
}
# The same backends with 50-item segments: the 120 items of `filled` span three of them.
SPECS = {**ONE_SEGMENT, **{f"{k}/segments": v.model_copy(update={"segment_size": 50}) for k, v in ONE_SEGMENT.items()}}


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
    assert len(gallery) == 120 and sum(s.ntotal for s in gallery.segments) == 120
    assert [s.ntotal for s in gallery.segments] == ([50, 50, 20] if kind.endswith("/segments") else [120])
    stored = gallery.vectors(np.arange(120))
    _, ids = gallery.search(stored, 1)
    assert (ids[:, 0] == np.arange(120)).mean() >= (0.6 if kind.startswith("ivfpq") else 0.95)
    assert list(gallery.metadata().generation) == [0] * 60 + [1] * 60


def shares_one_quantiser(gallery: Gallery) -> bool:
    address = int(gallery.quantizer.this)
    return all(int(segment.quantizer.this) == address for segment in gallery.segments)


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "ivf/segments", "ivfpq/segments"])
def test_coarse_quantiser_is_trained_once_on_the_first_session_and_recorded(kind):
    gallery, rng = filled(kind, sessions=1)
    nlist = gallery.spec.nlist
    centroids = np.array(gallery.quantizer.reconstruct_n(0, nlist))  # numpy whether or not faiss's torch_utils is loaded
    gallery.add(unit(rng, 30), sample_ids=np.arange(30), class_ids=np.zeros(30, int), session=1, generation=1)
    assert np.array_equal(np.array(gallery.quantizer.reconstruct_n(0, nlist)), centroids)
    assert gallery.describe()["trained"] == {"session": 0, "vectors": 60}
    assert len(gallery.segments) == (2 if kind.endswith("/segments") else 1) and shares_one_quantiser(gallery)


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
    if not gallery.lossy:  # PQ stores codes: what comes back is the decoded approximation
        assert np.array_equal(after[chosen], fresh)
    meta = gallery.metadata()
    assert list(meta.generation[chosen]) == [2] * 4 and list(meta.backfilled_at[chosen]) == [2] * 4
    assert meta.backfilled_at[untouched].isna().all()
    classes = np.unique(gallery.class_of(np.arange(120)))
    means, has = gallery.class_means(classes)
    assert has.all()
    np.testing.assert_allclose(means, recomputed_means(gallery, classes), atol=1e-6)
    _, ids = gallery.search(fresh, 1)
    if kind.startswith(("flat", "hnsw")):
        assert list(ids[:, 0]) == list(chosen)


def test_a_transform_marks_items_without_changing_their_generation():
    gallery, rng = filled("flat")
    gallery.replace(np.array([0, 1]), unit(rng, 2), session=1, transformed=True)
    meta = gallery.metadata()
    assert list(meta.generation[:2]) == [0, 0] and list(meta.transformed_at[:2]) == [1, 1] and meta.backfilled_at.isna().all()


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


@pytest.mark.parametrize("kind", ["flat", "ivf", "flat/segments", "ivf/segments"])
def test_gpu_copies_answer_like_the_cpu_index_and_are_made_again_only_for_changed_segments(kind, monkeypatch):
    """faiss-gpu stood in for by CPU clones: checks the copies' id handling and caching, not CUDA."""
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
    segments = len(gallery.segments)
    queries = unit(rng, 20)

    def both():
        on_gpu = gallery.search(queries, 5)
        gallery.gpu = False
        on_cpu = gallery.search(queries, 5)
        gallery.gpu = True
        assert np.array_equal(on_gpu[1], on_cpu[1]) and np.allclose(on_gpu[0], on_cpu[0])

    both()
    assert made == [("IndexFlatIP" if kind.startswith("flat") else "IndexIVFFlat")] * segments
    both()
    assert len(made) == segments  # nothing changed: no new copy
    gallery.replace(np.array([2]), unit(rng, 1), session=2, generation=2)  # in the first segment
    gallery.add(unit(rng, 5), sample_ids=np.arange(5), class_ids=np.zeros(5, int), session=2, generation=2)  # the newest
    both()
    assert len(made) == segments + (2 if segments > 1 else 1)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_a_session_adds_to_the_newest_segment_only(kind):
    gallery, rng = filled(f"{kind}/segments")
    sealed = gallery.segments[:2]
    before = gallery.vectors(np.arange(100))
    gallery.add(unit(rng, 45), sample_ids=np.arange(45), class_ids=np.zeros(45, int), session=2, generation=2)
    assert gallery.segments[:2] == sealed and all(a is b for a, b in zip(gallery.segments, sealed))
    assert [s.ntotal for s in gallery.segments] == [50, 50, 50, 15]
    assert np.array_equal(gallery.vectors(np.arange(100)), before)


def test_a_search_over_segments_is_the_exact_top_k_of_all_items():
    gallery, rng = filled("flat/segments")
    queries = unit(rng, 30)
    scores, ids = gallery.search(queries, 7)
    exact = queries @ gallery.vectors(np.arange(120)).T
    np.testing.assert_allclose(scores, -np.sort(-exact, axis=1)[:, :7], atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(exact, ids, axis=1), scores, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all() and all(len(set(row)) == 7 for row in ids)
    few, few_ids = filled("flat/segments", sessions=1, per_session=55)[0].search(queries, 200)
    assert few_ids.shape == (30, 55) and (np.sort(few_ids, axis=1) == np.arange(55)).all()


def test_hnsw_rebuilds_only_the_segments_whose_vectors_were_replaced():
    gallery, rng = filled("hnsw/segments")
    first, second, third = gallery.segments
    gallery.replace(np.array([60, 75]), unit(rng, 2), session=2, generation=2)  # both in the second segment
    assert gallery.rebuilds == 1 and gallery.segments[0] is first and gallery.segments[2] is third
    assert gallery.segments[1] is not second and gallery.segments[1].ntotal == 50


@pytest.fixture
def index_types():
    """INDEX_TYPES, restored after the test (what it registers is gone again)."""
    from cvstream.gallery.index import INDEX_TYPES

    held = INDEX_TYPES.snapshot()
    yield INDEX_TYPES
    INDEX_TYPES.restore(held)


def test_a_registered_index_type_grows_replaces_and_reloads_through_the_generic_paths(index_types, tmp_path):
    import faiss

    @index_types.register("sq-fp16", gpu=False)
    def half_precision(dim, spec):  # lossy, needs no training, cannot replace in place
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)

    @index_types.register("pq")
    def product_quantised(dim, spec):  # trains once, on the first session, without an inverted file
        return faiss.IndexPQ(dim, spec.pq_m, spec.pq_bits, faiss.METRIC_INNER_PRODUCT)

    rng = np.random.default_rng(0)
    for name, spec in [("sq-fp16", GallerySpec(index="sq-fp16", segment_size=50)), ("pq", GallerySpec(index="pq", pq_m=4, pq_bits=4, segment_size=50))]:
        gallery = Gallery(DIM, spec)
        assert gallery.lossy and not (name == "sq-fp16" and gallery.gpu)  # gpu=False keeps it on the CPU
        first, second = unit(rng, 60), unit(rng, 60)
        gallery.add(first, sample_ids=np.arange(60), class_ids=np.arange(60) % 3, session=0, generation=0)
        gallery.add(second, sample_ids=np.arange(60, 120), class_ids=np.arange(60) % 3, session=1, generation=1)
        assert [s.ntotal for s in gallery.segments] == [50, 50, 20]
        assert gallery.trained_session == (0 if name == "pq" else -1)
        tolerance = 1e-3 if name == "sq-fp16" else 0.5
        np.testing.assert_allclose(gallery.vectors(np.arange(60)), first, atol=tolerance)
        # a replacement rebuilds the segments it touches and keeps the class sums those of the stored vectors
        new = unit(rng, 3)
        gallery.replace(np.array([3, 55, 110]), new, session=1, generation=1)
        np.testing.assert_allclose(gallery.vectors(np.array([3, 55, 110])), new, atol=tolerance)
        assert gallery.rebuilds == 3
        np.testing.assert_allclose(gallery.class_means(np.arange(3))[0], recomputed_means(gallery, np.arange(3)), atol=1e-5)
        gallery.save(tmp_path / name)
        loaded = Gallery.load(tmp_path / name)
        queries = unit(rng, 10)
        assert np.array_equal(loaded.search(queries, 5)[1], gallery.search(queries, 5)[1])
        loaded.add(unit(rng, 40), sample_ids=np.arange(120, 160), class_ids=np.arange(40) % 3, session=2, generation=2)
        assert [s.ntotal for s in loaded.segments] == [50, 50, 50, 10] and loaded.trained_session == gallery.trained_session


def test_an_unknown_index_type_names_the_allowed_ones():
    with pytest.raises(UserError, match=r"gallery.index: unknown gallery index 'annoy'; allowed: flat, hnsw, ivf, ivfpq"):
        Gallery(DIM, GallerySpec.model_construct(**{**GallerySpec().model_dump(), "index": "annoy"}))
