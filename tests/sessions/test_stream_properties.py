"""Property-based checks of every stream setup over random sizes, counts and seeds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvstream.sessions.datasets import LabelSet
from cvstream.sessions.streams import SETUPS, Stream

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def label_set(counts: list[int], *, official_test: int = 0) -> LabelSet:
    """Classes with the given sample counts; optionally the last `official_test` of each form a test split."""
    labels = np.repeat(np.arange(len(counts)), counts)
    test = None
    if official_test:
        rank = np.arange(len(labels)) - np.repeat(np.cumsum([0, *counts[:-1]]), counts)
        test = rank >= np.repeat(np.asarray(counts) - official_test, counts)
    return LabelSet(labels=labels, class_names=tuple(f"c{c}" for c in range(len(counts))), test_mask=test)


def build(name: str, labels: LabelSet, seed: int, **params) -> Stream:
    setup = SETUPS.get(name)
    return setup(setup.Params(**params)).build(labels, seed)


@st.composite
def shapes(draw, *, min_samples: int = 4, max_samples: int = 40):
    sessions = draw(st.integers(1, 6))
    initial = draw(st.integers(1, 6))
    per = draw(st.integers(1, 5))
    needed = initial + (sessions - 1) * per
    extra = draw(st.integers(0, 3))
    counts = draw(st.lists(st.integers(min_samples, max_samples), min_size=needed + extra, max_size=needed + extra))
    seed = draw(st.integers(0, 2**32))
    return dict(sessions=sessions, initial_classes=initial, classes_per_session=per), counts, seed


def check_common(stream: Stream) -> None:
    """No training sample in two sessions; queries never trained on nor indexed; ids in range."""
    train = np.concatenate([s.train_ids for s in stream])
    assert len(np.unique(train)) == len(train)
    gallery = np.concatenate([s.gallery_ids for s in stream])
    assert len(np.unique(gallery)) == len(gallery)
    queries = np.unique(np.concatenate([s.query_ids for s in stream]))
    assert not np.intersect1d(queries, gallery).size
    for s in stream:
        assert np.all(np.diff(s.train_ids) > 0) and np.all(np.diff(s.query_ids) > 0)
        seen = stream.classes_seen(s.index)
        assert set(np.unique(stream.labels[s.query_ids])) == set(seen.tolist())  # queries: the seen classes


def off_home_counts(stream: Stream) -> dict[int, np.ndarray]:
    """Per class: its training samples per session."""
    out = {c: np.zeros(len(stream), dtype=np.int64) for c in stream.home_session}
    for s in stream:
        classes, n = np.unique(stream.labels[s.train_ids], return_counts=True)
        for c, k in zip(classes, n):
            out[int(c)][s.index] = k
    return out


@FAST
@given(shapes())
def test_disjoint_one_session_per_class(shape):
    params, counts, seed = shape
    stream = build("disjoint", label_set(counts), seed, **params)
    check_common(stream)
    for c, per_session in off_home_counts(stream).items():
        assert np.count_nonzero(per_session) == 1 and per_session[stream.home_session[c]] > 0
    sizes = [len(s.new_classes) for s in stream]
    assert sizes == [params["initial_classes"]] + [params["classes_per_session"]] * (params["sessions"] - 1)


@FAST
@given(shapes(min_samples=8), st.floats(0.05, 0.5))
def test_blurry_share_and_future_leakage(shape, ratio):
    params, counts, seed = shape
    stream = build("blurry", label_set(counts), seed, blurry_ratio=ratio, **params)
    check_common(stream)
    T = params["sessions"]
    for c, per_session in off_home_counts(stream).items():
        n = per_session.sum()
        home = stream.home_session[c]
        off = n - per_session[home]
        expected = min(round(ratio * n), n - 1) if T > 1 else 0
        assert off == expected
        assert abs(off / n - ratio) <= 0.5 / n + 1e-9 or T == 1 or expected == n - 1
        if T > 1 and off:
            others = np.delete(per_session, home)
            assert others.max() - others.min() <= 1  # spread evenly over all other sessions
    spread_everywhere = [c for c, v in off_home_counts(stream).items() if stream.home_session[c] > 0 and v.sum() - v[stream.home_session[c]] >= T - 1]
    if T > 1 and spread_everywhere:
        first = stream[0]
        home = stream.home_of(stream.labels[first.train_ids])
        assert set(spread_everywhere) <= set(stream.labels[first.train_ids][home > 0].tolist())  # future classes in session 0


def general_shape(params: dict, counts: list[int]) -> tuple[dict, list[int]]:
    """The default hold-back (2M) covers later sessions when session 0 is no smaller than the others."""
    params = {**params, "initial_classes": max(params["initial_classes"], params["classes_per_session"])}
    return params, [max(30, min(c, 45)) for c in counts] + [30] * params["initial_classes"]


def assert_equal_shares(stream, t: int) -> None:
    """Earlier classes give equal shares within one sample, except a class whose held-back samples ran out."""
    labels = stream.labels
    arrived = labels[np.concatenate([stream[i].train_ids for i in range(t + 1)])]
    queries = labels[np.unique(np.concatenate([s.query_ids for s in stream]))]
    now = labels[stream[t].train_ids]
    counts = {c: int((now == c).sum()) for c, h in stream.home_session.items() if h < t}
    top = max(counts.values())
    for c, n in counts.items():
        held_left = int((labels == c).sum() - (queries == c).sum() - (arrived == c).sum())
        assert n >= top - 1 or held_left == 0, (t, c, n, top)


@FAST
@given(shapes(min_samples=30, max_samples=45), st.floats(0.1, 0.3))
def test_general_past_only_share_and_no_reuse(shape, ratio):
    params, counts, seed = shape
    params, counts = general_shape(params, counts)
    stream = build("general", label_set(counts), seed, old_ratio=ratio, **params)
    check_common(stream)
    for s in stream:
        home = stream.home_of(stream.labels[s.train_ids])
        assert (home <= s.index).all()  # no future class, ever
        if s.index > 0:
            old = int((home < s.index).sum())
            new = len(home) - old
            assert old == round(ratio / (1 - ratio) * new)  # the share M within rounding
            assert abs(old / len(home) - ratio) <= 1 / len(home)
            assert_equal_shares(stream, s.index)
    assert all(sorted(s.new_classes.tolist()) == sorted(c for c, h in stream.home_session.items() if h == s.index) for s in stream)


@FAST
@given(shapes(min_samples=20), st.floats(0.1, 0.5), st.floats(0, 1), st.booleans())
def test_iblurry_disjoint_class_share(shape, ratio, n_share, stochastic):
    params, counts, seed = shape
    n_classes = params["initial_classes"] + (params["sessions"] - 1) * params["classes_per_session"]
    stream = build(
        "iblurry", label_set(counts), seed, blurry_ratio=ratio, disjoint_class_ratio=n_share,
        stochastic_boundaries=stochastic, **params,
    )
    check_common(stream)
    assert len(stream.home_session) == n_classes
    if params["sessions"] > 1:
        at_home_only = sum(np.count_nonzero(v) == 1 for v in off_home_counts(stream).values())
        assert at_home_only == round(n_share * n_classes)
    if stochastic:
        assert all(len(s.new_classes) >= 1 for s in stream)


def test_stochastic_boundaries_vary_with_the_seed():
    labels = label_set([20] * 40)
    params = dict(sessions=5, initial_classes=8, classes_per_session=8, stochastic_boundaries=True)
    layouts = {tuple(len(s.new_classes) for s in build("iblurry", labels, seed, **params)) for seed in range(6)}
    assert len(layouts) > 1 and all(sum(layout) == 40 for layout in layouts)
    assert tuple(len(s.new_classes) for s in build("iblurry", labels, 0, **{**params, "stochastic_boundaries": False})) == (8,) * 5


@FAST
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**32), st.data())
def test_few_shot_exactly_k_shots(sessions, initial, ways, shots, seed, data):
    needed = initial + (sessions - 1) * ways
    counts = data.draw(st.lists(st.integers(shots + 2, 30), min_size=needed, max_size=needed + 2))
    stream = build("few-shot", label_set(counts), seed, sessions=sessions, initial_classes=initial, ways=ways, shots=shots)
    check_common(stream)
    per_class = off_home_counts(stream)
    assert len(stream[0].new_classes) == initial
    for s in stream[1:]:
        assert len(s.new_classes) == ways
        classes, n = np.unique(stream.labels[s.train_ids], return_counts=True)
        assert set(classes.tolist()) == set(s.new_classes.tolist()) and (n == shots).all()
    for c in stream[0].new_classes:
        n = counts[c]
        assert per_class[int(c)][0] == n - min(max(round(n * 0.25), 1), n - 1)  # every training sample of a base class


@st.composite
def explicit_sessions(draw):
    n_classes = draw(st.integers(2, 8))
    counts = draw(st.lists(st.integers(10, 30), min_size=n_classes, max_size=n_classes))
    sessions = []
    left = {c: n - max(round(n * 0.25), 1) for c, n in enumerate(counts)}
    for _ in range(draw(st.integers(1, 4))):
        chosen = draw(st.lists(st.sampled_from([c for c in left if left[c] > 0] or [0]), min_size=1, max_size=4, unique=True))
        if not all(left[c] > 0 for c in chosen):
            break
        spec = {}
        for c in chosen:
            spec[c] = draw(st.integers(1, left[c]))
            left[c] -= spec[c]
        sessions.append(spec if draw(st.booleans()) else {f"c{c}": k for c, k in spec.items()})
    return counts, sessions


@FAST
@given(explicit_sessions(), st.integers(0, 2**32))
def test_explicit_runs_what_was_written(written, seed):
    counts, sessions = written
    stream = build("explicit", label_set(counts), seed, sessions=sessions)
    check_common(stream)
    assert len(stream) == len(sessions)
    for s, spec in zip(stream, sessions):
        wanted = {int(str(c).lstrip("c")): k for c, k in spec.items()}
        classes, n = np.unique(stream.labels[s.train_ids], return_counts=True)
        assert dict(zip(classes.tolist(), n.tolist())) == wanted


SETUP_CASES = [
    ("disjoint", {}),
    ("blurry", {"blurry_ratio": 0.2}),
    ("iblurry", {"blurry_ratio": 0.2, "disjoint_class_ratio": 0.5, "stochastic_boundaries": True}),
    ("general", {"old_ratio": 0.2}),
]


def assert_same(a: Stream, b: Stream) -> None:
    assert len(a) == len(b) and a.home_session == b.home_session
    for x, y in zip(a, b):
        for field in ("new_classes", "train_ids", "gallery_ids", "query_ids"):
            assert np.array_equal(getattr(x, field), getattr(y, field)), field


@FAST
@given(shapes(min_samples=20), st.sampled_from(SETUP_CASES), st.sampled_from(["seen", "all"]), st.sampled_from([0.0, 0.3]))
def test_export_import_round_trips_exactly(shape, case, queries, gallery_only):
    params, counts, seed = shape
    name, extra = case
    if name == "general":
        params, counts = general_shape(params, counts)
    labels = label_set(counts)
    stream = build(name, labels, seed, queries=queries, gallery_only_fraction=gallery_only, **params, **extra)
    assert_same(Stream.from_frame(stream.to_frame(), labels=labels.labels), stream)
    assert_same(Stream.from_frame(stream.to_frame()), stream)  # without the data set's labels too
    assert_same(build(name, labels, seed, queries=queries, gallery_only_fraction=gallery_only, **params, **extra), stream)


@pytest.mark.parametrize("name,extra", SETUP_CASES)
def test_a_different_seed_gives_a_different_stream(name, extra):
    labels = label_set([30] * 12)
    params = dict(sessions=3, initial_classes=4, classes_per_session=4, **extra)
    a, b = build(name, labels, 1, **params), build(name, labels, 2, **params)
    assert any(not np.array_equal(x.train_ids, y.train_ids) for x, y in zip(a, b))


def test_official_test_split_is_the_query_set():
    labels = label_set([12] * 6, official_test=3)
    stream = build("disjoint", labels, 0, sessions=2, initial_classes=3, classes_per_session=3)
    queries = stream[-1].query_ids
    assert labels.test_mask[queries].all() and len(queries) == 18
    assert not labels.test_mask[np.concatenate([s.train_ids for s in stream])].any()


def test_classes_trained_counts_classes_that_arrive_before_their_home_session():
    import numpy as np

    from cvstream.sessions.streams import Session, Stream

    labels = np.array([0, 0, 1, 1, 2, 2])
    sessions = [Session(index=0, new_classes=np.array([0]), train_ids=np.array([0, 2]), gallery_ids=np.array([0, 2]), query_ids=np.array([1])),
                Session(index=1, new_classes=np.array([1]), train_ids=np.array([3, 4]), gallery_ids=np.array([3, 4]), query_ids=np.array([1]))]
    stream = Stream(sessions, labels=labels, home_session={0: 0, 1: 1, 2: 2})
    assert stream.classes_seen(0).tolist() == [0] and stream.classes_trained(0).tolist() == [0, 1]  # class 1 arrived early
    assert stream.classes_trained(1).tolist() == [0, 1, 2] and stream.classes_seen(1).tolist() == [0, 1]


@FAST
@given(shapes(min_samples=8), st.sampled_from(["disjoint", "blurry", "general"]), st.floats(0.05, 0.5), st.integers(0, 2**32))
def test_validation_samples_leave_training_and_the_gallery(shape, setup, fraction, val_seed):
    params, counts, seed = shape
    extra = {"blurry": {"blurry_ratio": 0.2}, "general": {"old_ratio": 0.3}}.get(setup, {})
    whole = build(setup, label_set(counts), seed, **params, **extra)
    stream = whole.with_validation(fraction, val_seed)
    check_common(stream)
    queries = np.concatenate([s.query_ids for s in stream])
    for before, after in zip(whole, stream):
        val = after.val_ids
        assert not np.intersect1d(val, after.train_ids).size and not np.intersect1d(val, after.gallery_ids).size
        assert not np.intersect1d(val, queries).size
        assert np.array_equal(np.union1d(after.train_ids, val), before.train_ids)  # moved, nothing lost
        classes, n = np.unique(stream.labels[before.train_ids], return_counts=True)
        assert len(val) == sum(int(k * fraction) for k in n)  # that share of each class's arrivals
    again = Stream.from_frame(stream.to_frame(), labels=stream.labels)  # stream.parquet keeps the role
    assert all(np.array_equal(a.val_ids, b.val_ids) and np.array_equal(a.train_ids, b.train_ids) for a, b in zip(stream, again))
    assert whole.with_validation(0.0, val_seed) is whole


def test_equal_shares_give_no_slot_two_extra_units_when_others_run_dry():
    from cvstream.sessions.streams import equal_shares

    # Two slots hold one unit each; the 8 left are shared by the other two, 4 each, whatever the priority.
    assert equal_shares(np.array([1, 1, 10, 10]), 10, priority=np.array([2, 0, 3, 1])).tolist() == [1, 1, 4, 4]
    assert equal_shares(np.array([5, 5, 5]), 7, priority=np.array([1, 2, 0])).tolist() == [2, 3, 2]
    assert equal_shares(np.array([0, 3, 9]), 7).tolist() == [0, 3, 4]
    assert equal_shares(np.array([2, 2]), 9).tolist() == [2, 2]
