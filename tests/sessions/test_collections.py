"""Streams written as Rainbow-Memory / CVS JSON collections, and read back as the same sessions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_dict, write_scenario
from cvstream.cli import main
from cvstream.errors import UserError
from cvstream.scenario import Scenario
from cvstream.sessions import scenario_stream
from cvstream.sessions.collections import ROLES, TRAIN_FILE, cvs_setup, task_file, write_collections
from cvstream.sessions.setups.blurry import BlurryParams
from cvstream.sessions.setups.general import GeneralParams

CLASSES = ("ant", "bee", "cat", "dog", "eel", "fox")
STREAMS = {
    "disjoint": {"setup": "disjoint", "sessions": 3, "initial_classes": 2, "classes_per_session": 2, "query_fraction": 0.25},
    "general": {"setup": "general", "sessions": 3, "initial_classes": 2, "classes_per_session": 2, "old_ratio": 0.3, "query_fraction": 0.25},
}


def image_folder(root: Path, *, per_class: int = 12) -> None:
    """`root/<class>/NN.png`: no official split, so the queries travel only in the test files."""
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(np.full((8, 8, 3), 40 * c + k, dtype=np.uint8)).save(root / name / f"{k:02d}.png")


def folder_scenario(stream: dict) -> dict:
    return tiny_dict(dataset={"name": "image-folder", "root": "imgs", "image_size": 8}, stream=stream)


def build(data: Path, scenario: dict):
    s = Scenario.from_dict(scenario, source="test")
    _, label_set, stream = scenario_stream(s, data_root=data)
    return s, label_set, stream


def export(tmp_path: Path, scenario: dict, out: Path) -> int:
    path = write_scenario(tmp_path, scenario)
    return main(["stream", str(path), "--data-root", str(tmp_path), "--out", str(out), "--format", "cvs-json"])


def read_all(out: Path, dataset: str, setup: str, seed: int, classes: int, sessions: int) -> list[dict[str, list[dict]]]:
    return [
        {role: json.loads((out / task_file(dataset, role, setup=setup, seed=seed, classes=classes, task=t)).read_text()) for role in ROLES}
        for t in range(sessions)
    ]


def assert_same_sessions(a, b) -> None:
    assert len(a) == len(b) and a.home_session == b.home_session
    for s, r in zip(a, b):
        np.testing.assert_array_equal(s.train_ids, r.train_ids)
        np.testing.assert_array_equal(s.new_classes, r.new_classes)
        np.testing.assert_array_equal(s.query_ids, r.query_ids)


@pytest.mark.parametrize("setup", sorted(STREAMS))
def test_collections_read_back_as_the_same_sessions(tmp_path, setup):
    image_folder(tmp_path / "imgs")
    _, _, stream = build(tmp_path, folder_scenario(STREAMS[setup]))
    assert export(tmp_path, folder_scenario(STREAMS[setup]), tmp_path / "cols") == 0
    _, _, again = build(tmp_path, folder_scenario({"setup": "explicit", "collections": "cols"}))
    assert_same_sessions(stream, again)
    if setup == "general":  # old classes recur, and some held-back samples never arrive: only the test files say what is queried
        assert any(len(np.setdiff1d(stream.labels[s.train_ids], s.new_classes)) for s in stream)


def test_validation_samples_go_to_the_val_files_and_come_back_as_validation_samples(tmp_path):
    """The val files hold exactly the stream's validation samples, so the official code validates on the same samples,
    and an imported collection's val files are validation samples again (never training arrivals or gallery items)."""
    from cvstream.sessions.streams import validation_split

    image_folder(tmp_path / "imgs", per_class=20)
    scenario = {**folder_scenario(STREAMS["general"]), "training": {**folder_scenario(STREAMS["general"])["training"], "validation_fraction": 0.25}}
    _, label_set, stream = build(tmp_path, scenario)
    assert export(tmp_path, scenario, tmp_path / "cols") == 0
    by_name = {name: i for i, name in enumerate(label_set.file_names)}
    for s, files in zip(stream, read_all(tmp_path / "cols", "image-folder", "general30", 3, 2, 3)):
        val = sorted(by_name[r["file_name"]] for r in files["val"])
        train = sorted(by_name[r["file_name"]] for r in files["train"])
        arrivals = np.union1d(s.train_ids, s.val_ids)
        expected = validation_split(arrivals, stream.labels[arrivals], fraction=0.25, seed=3, session=s.index)
        assert val == sorted(expected.tolist()) == sorted(s.val_ids.tolist()) and len(val) > 0
        assert train == sorted(s.train_ids.tolist()) and not set(val) & set(train)
    _, _, again = build(tmp_path, folder_scenario({"setup": "explicit", "collections": "cols"}))
    assert_same_sessions(stream, again)
    for a, b in zip(stream, again):
        assert np.array_equal(a.val_ids, b.val_ids) and not np.intersect1d(b.val_ids, b.gallery_ids).size


def test_file_names_and_records_follow_the_official_pattern(tmp_path):
    # As in ivclab/CVS collections/cifar100/: the test files carry no setup.
    assert task_file("cifar100", "train", setup="general10", seed=1, classes=20, task=0) == "cifar100_train_general10_rand1_cls20_task0.json"
    assert task_file("cifar100", "val", setup="blurry10", seed=1, classes=20, task=4) == "cifar100_val_blurry10_rand1_cls20_task4.json"
    assert task_file("cifar100", "test", setup="general10", seed=1, classes=20, task=3) == "cifar100_test_rand1_cls20_task3.json"
    assert TRAIN_FILE.match("cifar100_train_general10_rand1_cls20_task0.json")["name"] == "cifar100_train_general10_rand1_cls20"
    assert cvs_setup("general", GeneralParams(old_ratio=0.3)) == "general30"
    assert cvs_setup("blurry", BlurryParams(blurry_ratio=0.1)) == "blurry10"
    assert cvs_setup("disjoint", None) == "disjoint"

    image_folder(tmp_path / "imgs")
    assert export(tmp_path, folder_scenario(STREAMS["general"]), tmp_path / "cols") == 0
    expected = {task_file("image-folder", role, setup="general30", seed=3, classes=2, task=t) for role in ROLES for t in range(3)}
    assert {p.name for p in (tmp_path / "cols").iterdir()} == expected
    for files in read_all(tmp_path / "cols", "image-folder", "general30", 3, 2, 3):
        assert files["val"] == []  # no training.validation_fraction: nothing held out
        for record in files["train"] + files["test"]:
            assert set(record) == {"klass", "file_name", "label"}
            assert (tmp_path / "imgs" / record["file_name"]).is_file() and record["file_name"].split("/")[0] == record["klass"]


def test_labels_number_classes_in_order_of_first_appearance(tmp_path):
    image_folder(tmp_path / "imgs")
    _, _, stream = build(tmp_path, folder_scenario(STREAMS["general"]))
    assert export(tmp_path, folder_scenario(STREAMS["general"]), tmp_path / "cols") == 0
    files = read_all(tmp_path / "cols", "image-folder", "general30", 3, 2, 3)
    records = [r for task in files for role in ROLES for r in task[role]]
    first = list(dict.fromkeys(r["label"] for r in records))
    assert first == list(range(len(CLASSES)))
    assert len({(r["klass"], r["label"]) for r in records}) == len(CLASSES)  # one label per class, in every file
    for t, task in enumerate(files):  # a session's new classes take the next labels, as CVS's growing classifier expects
        new = {r["label"] for r in task["test"]}
        assert new == {2 * t, 2 * t + 1} and {CLASSES[c] for c in stream[t].new_classes} == {r["klass"] for r in task["test"]}


def test_a_shorter_stream_replaces_a_longer_one(tmp_path):
    image_folder(tmp_path / "imgs")
    assert export(tmp_path, folder_scenario(STREAMS["disjoint"]), tmp_path / "cols") == 0
    assert export(tmp_path, folder_scenario({**STREAMS["disjoint"], "sessions": 2}), tmp_path / "cols") == 0
    assert len(list((tmp_path / "cols").iterdir())) == 2 * len(ROLES)
    _, _, again = build(tmp_path, folder_scenario({"setup": "explicit", "collections": "cols"}))
    assert len(again) == 2


def test_a_data_set_without_file_names_is_a_clear_error(tmp_path, capsys):
    assert export(tmp_path, tiny_dict(), tmp_path / "cols") == 2
    err = capsys.readouterr().err
    assert "synthetic" in err and "file names" in err and "Traceback" not in err
    assert not (tmp_path / "cols").exists()


def test_gallery_only_items_cannot_be_written(tmp_path):
    image_folder(tmp_path / "imgs")
    s, label_set, stream = build(tmp_path, folder_scenario({**STREAMS["disjoint"], "gallery_only_fraction": 0.3}))
    with pytest.raises(UserError, match="gallery_only_fraction"):
        write_collections(stream, label_set, tmp_path / "cols", dataset=s.dataset.name, setup="disjoint", seed=s.seed)


@pytest.mark.realdata
def test_tiny_imagenet_round_trip(tmp_path, data_root):
    archive = data_root / "tiny-imagenet-32"
    if not archive.is_dir():
        pytest.skip(f"no tiny-imagenet-32 in {data_root}")
    scenario = tiny_dict(
        dataset={"name": "tiny-imagenet", "root": str(archive)},
        stream={"setup": "disjoint", "sessions": 2, "initial_classes": 5, "classes_per_session": 5},
    )
    scenario["stream"].pop("query_fraction")  # the official val split is the query set
    _, label_set, stream = build(tmp_path, scenario)  # the collections go under tmp_path, the data root
    assert export(tmp_path, scenario, tmp_path / "cols") == 0
    files = read_all(tmp_path / "cols", "tinyimagenet200", "disjoint", 3, 5, 2)
    assert all(r["file_name"].startswith(f"train/{r['klass']}/images/") for task in files for r in task["train"])
    assert all(r["file_name"].startswith("val/images/") for task in files for r in task["test"])
    assert sum(len(task["test"]) for task in files) == 10 * 50
    _, _, again = build(tmp_path, {**scenario, "stream": {"setup": "explicit", "collections": "cols"}})
    assert_same_sessions(stream, again)
