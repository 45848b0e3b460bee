"""Explicit streams (class lists, JSON collections), stream files, and `cvstream stream`, including bad input (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import tiny_dict
from cvstream.cli import main
from cvstream.errors import UserError
from cvstream.scenario import Scenario
from cvstream.sessions import build_stream, load_labels, open_dataset
from cvstream.sessions.streams import Stream

CLASSES = ("apple", "bear", "couch")


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def image_folder(data: Path, *, per_class: int = 6, test: int = 2) -> None:
    """`data/imgs/{train,test}/<class>/NNNN.png`, the layout CVS collections name files in."""
    for part, n in (("train", per_class), ("test", test)):
        for c, name in enumerate(CLASSES):
            folder = data / "imgs" / part / name
            folder.mkdir(parents=True)
            for k in range(n):
                Image.fromarray(np.full((8, 8, 3), 30 * c + k, dtype=np.uint8)).save(folder / f"{k:04d}.png")


def collection(folder: Path, task: int, records: list[tuple[str, int]], *, name: str = "pets_train_general10_rand1_cls1") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    payload = [{"klass": CLASSES[c], "file_name": f"train/{CLASSES[c]}/{k:04d}.png", "label": c} for c, k in records]
    (folder / f"{name}_task{task}.json").write_text(json.dumps(payload))


def folder_scenario(**stream) -> dict:
    return tiny_dict(dataset={"name": "image-folder", "root": "imgs", "image_size": 8}, stream=stream)


def stream_and_labels(data: Path, scenario: dict):
    s = Scenario.from_dict(scenario, source="test")
    labels = load_labels(s, open_dataset(s, data_root=data))
    return build_stream(s, labels, source="test", data_root=data), labels


def stream_of(data: Path, scenario: dict) -> Stream:
    return stream_and_labels(data, scenario)[0]


def test_json_collections_run_as_written(tmp_path):
    image_folder(tmp_path)
    task0 = [(0, k) for k in range(5)] + [(1, k) for k in range(5)]
    task1 = [(2, k) for k in range(5)] + [(0, 5), (1, 5)]
    collection(tmp_path / "cols", 0, task0)
    collection(tmp_path / "cols", 1, task1)
    stream, labels = stream_and_labels(tmp_path, folder_scenario(setup="explicit", collections="cols"))
    names = [[labels.file_names[i] for i in s.train_ids] for s in stream]
    assert sorted(names[0]) == sorted(f"train/{CLASSES[c]}/{k:04d}.png" for c, k in task0)
    assert sorted(names[1]) == sorted(f"train/{CLASSES[c]}/{k:04d}.png" for c, k in task1)
    assert stream.home_session == {0: 0, 1: 0, 2: 1}
    assert all(labels.file_names[q].startswith("test/") for q in stream[1].query_ids) and len(stream[1].query_ids) == 6


@pytest.mark.parametrize(
    "setup, expected",
    [
        (dict(collections="../outside"), "leaves"),
        (dict(collections="cols"), "not in the data set"),
        (dict(collections="cols", collection="nope"), "no collection 'nope'"),
    ],
    ids=["escapes-the-data-root", "names-a-missing-image", "unknown-collection"],
)
def test_bad_collections_exit_2(tmp_path, capsys, setup, expected):
    data = tmp_path / "data"
    image_folder(data)
    collection(data / "cols", 0, [(0, 1), (1, 99)])  # 0099.png does not exist
    path = write_yaml(tmp_path / "s.yaml", folder_scenario(setup="explicit", **setup))
    assert main(["stream", str(path), "--data-root", str(data), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_collection_file_name_that_escapes_and_a_wrong_class(tmp_path):
    image_folder(tmp_path)
    (tmp_path / "cols").mkdir()
    (tmp_path / "cols" / "x_train_d_rand1_cls1_task0.json").write_text(json.dumps([{"klass": "apple", "file_name": "../imgs/train/apple/0000.png"}]))
    with pytest.raises(UserError, match="leaves the data set's root"):
        stream_of(tmp_path, folder_scenario(setup="explicit", collections="cols"))
    (tmp_path / "cols" / "x_train_d_rand1_cls1_task0.json").write_text(json.dumps([{"klass": "bear", "file_name": "train/apple/0000.png"}]))
    with pytest.raises(UserError, match="says 'train/apple/0000.png' is a 'bear'"):
        stream_of(tmp_path, folder_scenario(setup="explicit", collections="cols"))


def test_explicit_lists_with_names_counts_and_a_recurring_class(tmp_path):
    image_folder(tmp_path)
    stream = stream_of(tmp_path, folder_scenario(setup="explicit", sessions=[{"apple": 4, "bear": 6}, ["couch", "apple"]]))
    counts = [dict(zip(*np.unique(stream.labels[s.train_ids], return_counts=True))) for s in stream]
    assert counts == [{0: 4, 1: 6}, {0: 2, 2: 6}]  # apple's remaining 2 arrive in session 1
    assert stream.home_session == {0: 0, 1: 0, 2: 1}


def run_stream(tmp_path: Path, data: dict, name: str = "s.yaml") -> tuple[int, Path]:
    out = tmp_path / f"out-{name}"
    return main(["stream", str(write_yaml(tmp_path / name, data)), "--out", str(out)]), out / "stream.parquet"


def test_stream_command_writes_a_stream_that_runs_back_exactly(tmp_path, capsys):
    code, written = run_stream(tmp_path, tiny_dict(stream={"setup": "blurry", "sessions": 3, "initial_classes": 4, "classes_per_session": 4, "blurry_ratio": 0.2}))
    assert code == 0 and written.is_file()
    table = capsys.readouterr().out
    assert "future" in table and "off-home" in table and str(written) in table.replace("\n", "")
    code, again = run_stream(tmp_path, tiny_dict(stream={"setup": "stream-file", "path": str(written)}), name="replay.yaml")
    assert code == 0
    pd.testing.assert_frame_equal(pd.read_parquet(written), pd.read_parquet(again))
    # Relative stream files resolve next to the scenario file.
    (tmp_path / "sub").mkdir()
    code, third = run_stream(tmp_path, tiny_dict(stream={"setup": "stream-file", "path": "../out-s.yaml/stream.parquet"}), name="sub/r.yaml")
    assert code == 0 and pd.read_parquet(third).equals(pd.read_parquet(written))


@pytest.mark.parametrize(
    "stream, expected",
    [
        ({"setup": "explicit", "sessions": [[0, 1], ["no-such-class"]]}, "unknown class 'no-such-class'"),
        ({"setup": "explicit", "sessions": [[0, 99]]}, "unknown class id 99"),
        ({"setup": "few-shot", "sessions": 2, "initial_classes": 4, "ways": 2, "shots": 50}, "50 shots cannot be met"),
        ({"setup": "general", "sessions": 3, "initial_classes": 1, "classes_per_session": 5, "old_ratio": 0.4, "hold_back": 0.05}, "held back"),
        ({"setup": "iblurry", "sessions": 3, "initial_classes": 1, "classes_per_session": 1, "stochastic_boundaries": True, "class_order": [0, 1]}, "lists 2 classes"),
        ({"setup": "stream-file", "path": "missing.parquet"}, "not found"),
    ],
    ids=["unknown-class-name", "unknown-class-id", "too-many-shots", "general-cannot-be-met", "order-too-short", "missing-stream-file"],
)
def test_streams_that_cannot_be_built_exit_2(tmp_path, capsys, stream, expected):
    code, _ = run_stream(tmp_path, tiny_dict(stream=stream))
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err


def test_a_corrupt_or_foreign_stream_file_exits_2(tmp_path, capsys):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    code, _ = run_stream(tmp_path, tiny_dict(stream={"setup": "stream-file", "path": str(tmp_path / "bad.parquet")}))
    assert code == 2 and "cannot read the stream file" in capsys.readouterr().err
    frame = pd.DataFrame({"sample_id": [0, 1], "class_id": [5, 5], "session": [0, 0], "role": ["train"] * 2, "home_session": [0, 0]})
    frame.to_parquet(tmp_path / "foreign.parquet")  # samples 0 and 1 are class 0 in the tiny data set
    code, _ = run_stream(tmp_path, tiny_dict(stream={"setup": "stream-file", "path": str(tmp_path / "foreign.parquet")}))
    assert code == 2 and "another data set" in capsys.readouterr().err


@pytest.mark.parametrize(
    "dataset, expected",
    [
        ({"name": "fashion-mnist", "root": "empty"}, "train-images-idx3-ubyte[.gz] not found"),
        ({"name": "cifar10", "root": "empty"}, "data_batch_1"),
        ({"name": "tiny-imagenet", "root": "empty"}, "no wnids.txt"),
        ({"name": "features", "path": "empty/none.parquet"}, "not found"),
    ],
    ids=["fashion-mnist", "cifar10", "tiny-imagenet", "features"],
)
def test_missing_data_sets_exit_2(tmp_path, capsys, dataset, expected):
    (tmp_path / "empty").mkdir()
    path = write_yaml(tmp_path / "s.yaml", tiny_dict(dataset=dataset))
    assert main(["stream", str(path), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_a_corrupt_label_file_exits_2(tmp_path, capsys):
    root = tmp_path / "fm"
    root.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (root / f"{stem}.gz").write_bytes(b"\x1f\x8b broken gzip")
    path = write_yaml(tmp_path / "s.yaml", tiny_dict(dataset={"name": "fashion-mnist", "root": "fm"}))
    assert main(["stream", str(path), "--data-root", str(tmp_path)]) == 2
    assert "fashion-mnist: cannot read" in capsys.readouterr().err
