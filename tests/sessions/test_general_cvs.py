"""`general` with old_ratio 0.1 on CIFAR-100's shape reproduces the CVS general10 stream's statistics (SPEC section 3)."""

from __future__ import annotations

import numpy as np

from cvstream.sessions.datasets import LabelSet
from cvstream.sessions.streams import SETUPS


def cifar100_shaped() -> LabelSet:
    """100 classes x 500 images; the last 50 of each class are the held-out split, leaving 450 for training (as CVS)."""
    labels = np.repeat(np.arange(100), 500)
    test_mask = np.tile(np.arange(500) >= 450, 100)
    return LabelSet(labels=labels, class_names=tuple(f"c{c}" for c in range(100)), test_mask=test_mask)


def test_general10_matches_the_cvs_collections():
    setup = SETUPS.get("general")
    params = setup.Params(sessions=5, initial_classes=20, classes_per_session=20, old_ratio=0.1)
    stream = setup(params).build(cifar100_shaped(), seed=1)
    distinct = np.unique(np.concatenate([s.train_ids for s in stream]))
    for s in stream:
        home = stream.home_of(stream.labels[s.train_ids])
        new = stream.labels[s.train_ids][home == s.index]
        classes, per_class = np.unique(new, return_counts=True)
        assert len(classes) == 20 and (per_class == 360).all()  # 20 new classes x 360 images
        assert (home <= s.index).all()  # earlier classes only
        if s.index:
            share = (home < s.index).mean()
            assert abs(share - 0.1) < 0.005  # about 10% of the session from earlier classes
            assert len(np.unique(stream.labels[s.train_ids][home < s.index])) == 20 * s.index  # drawn from every earlier class
    # Every earlier class gives an equal share: CVS's general10 files, 40 per class in session 1, 9-10 in session 4.
    for t, expected in ((1, {40}), (2, {20}), (3, {13, 14}), (4, {10})):
        s = stream[t]
        old = stream.labels[s.train_ids][stream.home_of(stream.labels[s.train_ids]) < t]
        _, per_class = np.unique(old, return_counts=True)
        assert set(per_class.tolist()) <= expected and len(per_class) == 20 * t
    # 100 x 360 at home plus 800 old images in each of sessions 1-4, none used twice.
    assert len(distinct) == sum(len(s.train_ids) for s in stream) == 100 * 360 + 4 * 800
