"""Model upgrades (SPEC section 12): a new network, a wider embedding, mid-stream.

The scenario's `model.upgrades` and what validation refuses; a gallery of two dimensions that
ranks exactly as zero-padding would (`narrow_queries: pad`) or by the cosine in the older space
(the default), in every search of it; every method across an upgrade (or refused with a
message); BT^2's basis transformation; the probe matrix across dimensions; and a run with an
upgrade that is killed and resumed.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import killed_mid_session, run_until_killed, tiny_dict, tiny_scenario, write_scenario
from cvstream.cli import main
from cvstream.errors import ScenarioError
from cvstream.evaluation.compat import ProbeSet
from cvstream.gallery import Gallery
from cvstream.models import METHODS
from cvstream.models.methods.base import Batch, TrainContext
from cvstream.models.methods.bt2 import BT2
from cvstream.models.net import BasisTransform
from cvstream.scenario import GallerySpec, Scenario
from cvstream.simulator import Simulator, load_run
from cvstream.simulator.checkpoint import latest

UPGRADE = {1: {"backbone": "resnet18-cifar", "embedding_dim": 32, "width": 4}}  # the tiny scenario's convnet is 16-d


def unit(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- the scenario ---------------------------------------------------------------------------


def test_upgrades_are_validated_like_model_and_keep_other_scenarios_digests():
    scenario = tiny_scenario(model={"upgrades": {"2": {"backbone": "resnet18-cifar", "embedding_dim": 32}}})
    spec = scenario.model.upgrades[2]
    assert (spec.backbone, spec.embedding_dim, spec.width) == ("resnet18-cifar", 32, 64)  # the backbone's own width, filled in
    assert scenario.model.at(1).embedding_dim == 16 and scenario.model.at(2) is spec and scenario.model.at(5) is spec
    again = Scenario.from_dict(json.loads(json.dumps(scenario.to_dict())))  # as run.json reads back: string keys
    assert again.model.upgrades == scenario.model.upgrades and again.digest() == scenario.digest()
    assert "upgrades" not in tiny_scenario().to_dict()["model"]  # absent stays absent: the digest of every other scenario
    with pytest.raises(ScenarioError, match="upgrades.1.backbone"):
        tiny_scenario(model={"upgrades": {1: {"backbone": "vgg"}}})


def test_a_shrinking_embedding_or_an_upgrade_of_session_0_is_refused_with_a_message():
    with pytest.raises(ScenarioError, match=r"upgrades.2.embedding_dim = 8 is smaller than the 16 of model: an embedding may only grow"):
        tiny_scenario(model={"upgrades": {2: {"embedding_dim": 8}}})
    with pytest.raises(ScenarioError, match=r"upgrades.2.embedding_dim = 24 is smaller than the 32 of upgrades.1"):
        tiny_scenario(model={"upgrades": {1: {"embedding_dim": 32}, 2: {"embedding_dim": 24}}})
    with pytest.raises(ScenarioError, match="session 0: an upgrade replaces a trained network"):
        tiny_scenario(model={"upgrades": {0: {"embedding_dim": 32}}})


def test_validate_refuses_an_upgrade_after_the_stream_or_that_the_method_cannot_train(tmp_path, capsys):
    late = write_scenario(tmp_path, tiny_dict(model={"upgrades": {3: UPGRADE[1]}}), "late.yaml")
    assert main(["validate", str(late)]) == 2
    assert "model.upgrades: session 3, but the stream has 3 sessions" in capsys.readouterr().err
    frozen = write_scenario(tmp_path, tiny_dict(model={"upgrades": UPGRADE}, method={"name": "frozen"}), "frozen.yaml")
    assert main(["validate", str(frozen)]) == 2
    assert "frozen takes no training step at session 1" in " ".join(capsys.readouterr().err.split())
    random = write_scenario(tmp_path, tiny_dict(model={"upgrades": UPGRADE}, replay={"size": 24, "selection": "random"}), "random.yaml")
    assert main(["validate", str(random)]) == 2
    assert "would mix the dimensions of model.upgrades" in " ".join(capsys.readouterr().err.split())
    ivf = write_scenario(tmp_path, tiny_dict(model={"upgrades": {2: UPGRADE[1]}}, stream={"classes_per_session": 1},
                                             gallery={"index": "ivf", "nlist": 30}), "ivf.yaml")
    assert main(["validate", str(ivf)]) == 2
    assert "session 2 (the model upgrade to 32 dimensions) adds 15 items" in " ".join(capsys.readouterr().err.split())


# -- the gallery ----------------------------------------------------------------------------


def _two_dimensions(spec: GallerySpec, rng) -> tuple[Gallery, Gallery]:
    """A gallery of 40 16-d items, then (after widen) 50 32-d ones, and a 32-d gallery of the same vectors zero-padded."""
    gallery, padded = Gallery(16, spec), Gallery(32, spec)
    old, new = unit(rng, 40, 16), unit(rng, 50, 32)
    classes = rng.integers(0, 5, 90)
    gallery.add(old, sample_ids=np.arange(40), class_ids=classes[:40], session=0, generation=0)
    gallery.widen(32)
    gallery.add(new, sample_ids=np.arange(40, 90), class_ids=classes[40:], session=1, generation=1)
    everything = np.vstack([np.pad(old, ((0, 0), (0, 16))), new])
    padded.add(everything, sample_ids=np.arange(90), class_ids=classes, session=0, generation=0)
    return gallery, padded


def _same_search(gallery: Gallery, padded: Gallery, queries: np.ndarray, k: int = 12) -> None:
    scores, ids = gallery.search(queries, k)
    want_scores, want_ids = padded.search(queries, k)
    np.testing.assert_array_equal(ids, want_ids)  # same ids, same order
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)


def test_truncated_search_over_narrower_segments_equals_a_search_over_zero_padded_vectors(tmp_path):
    rng = np.random.default_rng(0)
    gallery, padded = _two_dimensions(GallerySpec(segment_size=25, gpu=False, narrow_queries="pad"), rng)
    assert [(s.d, s.ntotal) for s in gallery.segments] == [(16, 25), (16, 15), (32, 25), (32, 25)]  # the upgrade closed segment 1
    queries = unit(rng, 30, 32)
    _same_search(gallery, padded, queries)
    _same_search(gallery, padded, unit(rng, 30, 16))  # a narrower query: zero-padded against the wider segments
    np.testing.assert_array_equal(gallery.vectors(np.arange(90)), padded.vectors(np.arange(90)))  # zero-padded to 32
    np.testing.assert_allclose(gallery.class_means(np.arange(5))[0], padded.class_means(np.arange(5))[0], atol=1e-6)

    # A backfill re-embeds into the new dimension: the segment is stored again at 32-d, its other items zero-padded.
    chosen, fresh = np.array([3, 30]), unit(rng, 2, 32)
    stored_before = gallery.vectors(np.arange(90))
    gallery.replace(chosen, fresh, session=2, generation=2)
    padded.replace(chosen, fresh, session=2, generation=2)
    assert [s.d for s in gallery.segments] == [32, 32, 32, 32] and gallery.rebuilds == 2
    untouched = np.setdiff1d(np.arange(90), chosen)
    np.testing.assert_array_equal(gallery.vectors(untouched), stored_before[untouched])
    np.testing.assert_array_equal(gallery.vectors(chosen), fresh)
    _same_search(gallery, padded, queries)
    np.testing.assert_allclose(gallery.class_means(np.arange(5))[0], padded.class_means(np.arange(5))[0], atol=1e-6)
    with pytest.raises(ValueError, match="cannot narrow"):
        gallery.widen(16)


@pytest.mark.parametrize("narrow_queries", ["pad", "normalize"])
def test_a_search_among_some_items_and_an_exact_copy_match_narrower_items_as_the_gallery_does(narrow_queries):
    gallery = Gallery(2, GallerySpec(gpu=False, narrow_queries=narrow_queries))
    gallery.add(np.array([[1.0, 0.0]], np.float32), sample_ids=np.array([0]), class_ids=np.array([0]), session=0, generation=0)
    gallery.widen(4)
    newer = np.array([[0.6, 0.0, 0.8, 0.0], [0.5, 0.0, 0.75**0.5, 0.0]], np.float32)  # the second is the query itself
    gallery.add(newer, sample_ids=np.array([1, 2]), class_ids=np.array([1, 2]), session=1, generation=1)
    query = newer[1:]
    # Item 0 scores 0.5 padded and 1.0 as a cosine in the older space; item 1 scores 0.3 + 0.8 x 0.866 = 0.993 either way.
    one = 0.3 + 0.8 * 0.75**0.5
    expected, expected_scores = {"pad": ([1, 0], [one, 0.5]), "normalize": ([0, 1], [1.0, one])}[narrow_queries]
    scores, ids = gallery.search(query, 2, items=np.array([1, 0]))
    assert ids.tolist() == [expected]
    np.testing.assert_allclose(scores[0], expected_scores, atol=1e-6)
    assert gallery.search(query, 3)[1].tolist() == [[2, *expected]]  # the whole gallery: the same matching
    assert gallery.search(query, 5, items=np.array([0]))[1].tolist() == [[0]]
    copy = gallery.exact_copy()
    for a, b in zip(copy.search(query, 3), gallery.search(query, 3)):
        np.testing.assert_array_equal(a, b)
    copy.replace(np.array([0]), -newer[1:], session=2)  # a what-if change leaves the gallery as it was
    assert copy.search(query, 3)[1].tolist() == [[2, 1, 0]] and gallery.search(query, 3)[1].tolist() == [[2, *expected]]


@pytest.mark.parametrize("index", ["flat", "ivf", "hnsw"])
def test_a_gallery_of_two_dimensions_saves_loads_and_grows_on(index, tmp_path):
    rng = np.random.default_rng(1)
    spec = GallerySpec(index=index, nlist=4, nprobe=4, segment_size=25, gpu=False)
    gallery, _ = _two_dimensions(spec, rng)
    gallery.save(tmp_path)
    info = json.loads((tmp_path / "gallery.json").read_text())
    assert info["dim"] == 32 and [entry.get("dim") for entry in info["segments"]] == [16, 16, None, None]
    loaded = Gallery.load(tmp_path, class_sums=gallery.class_sums())
    queries = unit(rng, 20, 32)
    for a, b in zip(gallery.search(queries, 8), loaded.search(queries, 8)):
        np.testing.assert_array_equal(a, b)
    assert loaded.describe() == gallery.describe() and loaded.metadata().equals(gallery.metadata())
    if index == "ivf":  # each dimension's segments share its own coarse quantiser again
        for dim in (16, 32):
            address = {int(s.quantizer.this) for s in loaded.segments if s.d == dim}
            assert address == {int(loaded._templates[dim].quantizer.this)}
        assert info["trained"] == {"session": 1, "vectors": 50} and info["narrower"] == [{"dim": 16, "trained": {"session": 0, "vectors": 40}}]
    more = unit(rng, 10, 32)
    for g in (gallery, loaded):
        g.add(more, sample_ids=np.arange(90, 100), class_ids=np.zeros(10, np.int64), session=2, generation=2)
    np.testing.assert_array_equal(loaded.vectors(np.arange(100)), gallery.vectors(np.arange(100)))


# -- every method across an upgrade ---------------------------------------------------------

REFUSED = {"frozen": "takes no training step at session 1", "m2sd": "takes no training step at session 1"}


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_across_an_upgrade_or_is_refused_with_a_message(name):
    data = tiny_dict(model={"upgrades": UPGRADE}, method={"name": name}, stream={"sessions": 2}, evaluation={"probe_items": 20})
    if name in REFUSED:
        with pytest.raises(ScenarioError, match=REFUSED[name]):
            Simulator(Scenario.from_dict(data), write=False)
        return
    sim = Simulator(Scenario.from_dict(data), write=False)
    result = sim.run()
    assert result.status == "completed"
    assert sim.model.spec["backbone"] == "resnet18-cifar" and sim.model.embedding_dim == 32
    assert sorted({s.d for s in sim.gallery.segments}) == [16, 32]  # never re-stored: backfill policy none
    train = result.events[(result.events.kind == "train") & (result.events.session == 1)]
    terms = json.loads(train.detail.iloc[0])["loss"]
    # Every compatibility term acted across the change (the old side 16-d, the new embedding 32-d), finite.
    assert set(terms) == METHODS.get(name).loss_terms and all(np.isfinite(v) for v in terms.values())
    matrix = result.metrics[(result.metrics.session == 1) & result.metrics.gallery_view.isin(["gen:0", "gen:1"])]
    assert set(matrix.metric) == {"recall@1", "bct_criterion"}  # C[1][0] across 32-d queries and 16-d probe vectors


def test_the_context_compares_through_the_first_old_dimensions():
    context = TrainContext(session=1, old_dim=4)
    embeddings = torch.arange(12.0).reshape(2, 6)
    assert torch.equal(context.old_view(embeddings), embeddings[:, :4])
    assert TrainContext(session=1).old_view(embeddings) is embeddings


# -- bt2 ------------------------------------------------------------------------------------


def test_the_basis_transformation_keeps_the_new_branch_and_puts_compatibility_first():
    torch.manual_seed(0)
    head = BasisTransform(10, dim=12, old_dim=8, extra_dims=2, scale=3.0)
    features = torch.randn(5, 10)
    out = head(features)
    a = F.normalize(head.compatible(features), dim=1)
    f = F.normalize(head.new(features), dim=1)
    # Orthonormal maps: inner products of the outputs are <a, a'> + C^2 <f, f'>, nothing of f is lost.
    torch.testing.assert_close(out @ out.t(), a @ a.t() + 9 * f @ f.t(), atol=1e-5, rtol=1e-5)
    z = torch.cat([a, head.rotate_new(3 * f)], dim=1)
    torch.testing.assert_close(out[:, 8:], z[:, 8:])  # past the old block: the rest of [a; P C f] as it is
    torch.testing.assert_close(out[:, :8], head.rotate_old(z[:, :8]))
    with pytest.raises(ValueError, match="extra_dims"):
        BasisTransform(10, dim=12, old_dim=8, extra_dims=9, scale=3.0)


def test_bt2_builds_a_basis_head_at_the_upgrade_and_trains_its_block_against_the_old_generation():
    sim = Simulator(tiny_scenario(model={"upgrades": UPGRADE}, method={"name": "bt2"}, stream={"sessions": 2}), write=False)
    sim.run()
    assert sim.model.spec["head"] == {"name": "basis", "old_dim": 16, "extra_dims": 4, "scale": 3.0}  # a quarter of 16
    assert isinstance(sim.model.embed, BasisTransform)
    # On a hand-made batch: a block equal to the old embedding has no cosine term left.
    model = sim.model
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    method = BT2(BT2.Params())
    with torch.no_grad():
        target = F.normalize(model(x)[:, :16], dim=1)
    context = TrainContext(session=2, previous_embed=lambda inputs: target, old_dim=16)
    method.begin_session(model, context)
    rows = torch.arange(6) % model.num_classes
    terms = method.loss(model, Batch(inputs=x, rows=rows, class_ids=model.class_ids[rows], embeddings=model(x)), context)
    assert set(terms) == {"ce", "cosine"} and abs(float(terms["cosine"].detach())) < 1e-5  # no old classifier given: no influence


def test_bt2_refuses_a_compatible_branch_wider_than_the_old_embedding():
    with pytest.raises(ScenarioError, match=r"method.extra_dims = 20 must be at most the old dimension \(16\)"):
        Simulator(tiny_scenario(model={"upgrades": UPGRADE}, method={"name": "bt2", "extra_dims": 20}), write=False)


# -- metrics across generations of different sizes ------------------------------------------


def test_the_probe_matrix_compares_wider_queries_through_the_old_dimensions_and_survives_a_checkpoint():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    probe = ProbeSet(gallery_ids=np.arange(6), query_ids=np.array([6, 7]), labels=labels)
    old = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 3, 3]]  # items of classes 0, 1, 2, 0, 1, 2
    probe.add_generation(0, gallery_vectors=old, query_vectors=np.eye(4, dtype=np.float32)[[0, 1]])
    # Generation 1 is 8-d: its first 4 components point at item 0 (class 0) and item 1 (class 1); the rest would
    # point elsewhere if the old vectors were anything but zero there.
    queries = np.zeros((2, 8), np.float32)
    queries[0, [0, 5]] = [0.6, 0.8]
    queries[1, [2, 6]] = [0.6, 0.8]  # item 2 is class 2, the query class 1: a miss
    new = np.pad(old, ((0, 0), (0, 4))) + 0.0
    row = probe.add_generation(1, gallery_vectors=new, query_vectors=queries)
    padded = np.pad(old, ((0, 0), (0, 4)))
    nearest = labels[np.argmax(queries @ padded.T, axis=1)]
    assert row[0] == float(np.mean(nearest == labels[[6, 7]])) == 0.5
    rows = probe.rows(session=1, generation=1)
    assert {r.metric for r in rows} >= {"recall@1", "bct_criterion", "ac", "bc", "fc"}
    restored = ProbeSet(gallery_ids=np.arange(6), query_ids=np.array([6, 7]), labels=labels)
    restored.restore(probe.state())
    assert restored.gallery_vectors[0].shape == (6, 4) and restored.gallery_vectors[1].shape == (6, 8)
    np.testing.assert_array_equal(restored.gallery_vectors[0], old)
    assert restored.matrix == probe.matrix


# -- a run with an upgrade: killed, resumed, reported ---------------------------------------

# bt2 (its basis head must be rebuilt on resume), an IVF gallery in 25-item segments (two dimensions, each with its
# own quantiser) and a backfill of one item per session (a narrower segment stored again at 32-d, others kept).
SCENARIO = tiny_dict(
    model={"upgrades": UPGRADE}, method={"name": "bt2"}, evaluation={"probe_items": 30},
    gallery={"index": "ivf", "nlist": 4, "nprobe": 2, "segment_size": 25}, backfill={"policy": "partial", "budget": 1},
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("upgrade") / "whole"
    Simulator(Scenario.from_dict(SCENARIO), out_dir=out).run()
    return out


def test_a_run_with_an_upgrade_resumes_after_sigkill_and_writes_what_the_uninterrupted_run_writes(uninterrupted, tmp_path):
    info = json.loads((uninterrupted / "gallery.json").read_text())
    assert info["dim"] == 32 and {entry.get("dim", 32) for entry in info["segments"]} == {16, 32}
    assert info["hnsw_rebuilds"] >= 1  # a backfilled item's narrower segment was stored again at 32-d
    out = tmp_path / "killed"
    run_until_killed(killed_mid_session(SCENARIO, deployed=1), str(out))
    assert latest(out)["session"] == 1  # the checkpoint holds the upgraded network
    assert json.loads((out / "checkpoint" / "session-1" / "state.json").read_text())["model_spec"]["head"]["name"] == "basis"
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    whole, resumed = load_run(uninterrupted), load_run(out)
    pd.testing.assert_frame_equal(whole.metrics.drop(columns="run_id"), resumed.metrics.drop(columns="run_id"))  # same rows, values, order
    pd.testing.assert_frame_equal(whole.gallery, resumed.gallery)


def test_the_report_marks_the_upgrade_session(uninterrupted, tmp_path):
    from rich.console import Console

    from cvstream.reporting.report import build_report

    report = build_report([uninterrupted], out=tmp_path / "report")
    console = Console(file=io.StringIO(), width=200)
    console.print(report.tables[0])
    assert "1 (upgrade: resnet18-cifar, 32-d)" in console.file.getvalue()


def test_normalized_narrow_queries_score_narrower_items_by_the_cosine_of_the_first_components():
    rng = np.random.default_rng(1)
    gallery, _ = _two_dimensions(GallerySpec(segment_size=25, gpu=False, narrow_queries="normalize"), rng)
    queries = unit(rng, 20, 32)
    scores, ids = gallery.search(queries, 90)
    stored = gallery.vectors(np.arange(90))
    dims = np.concatenate([np.full(int(s.ntotal), int(s.d)) for s in gallery.segments])
    head = queries[:, :16] / np.linalg.norm(queries[:, :16], axis=1, keepdims=True)
    expected = np.where(dims[None, :] == 16, head @ stored[:, :16].T, queries @ stored.T)
    np.testing.assert_allclose(scores, np.take_along_axis(expected, ids, axis=1), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # still best first, across segments of both dimensions
    assert GallerySpec().narrow_queries == "normalize"  # the default (SPEC section 12)
    plain, _ = _two_dimensions(GallerySpec(segment_size=25, gpu=False, narrow_queries="pad"), np.random.default_rng(1))
    assert not np.allclose(plain.search(queries, 90)[0], scores)
