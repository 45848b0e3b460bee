"""Failure modes listed in docs/failure-modes.md that no other test covered: each ends in a message, no traceback."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import tiny_dict, write_scenario
from cvstream.cli import main
from cvstream.errors import DataError, UserError
from cvstream.sessions.datasets import DATASETS
from cvstream.sessions.streams import Stream
from cvstream.simulator import checkpoint
from cvstream.simulator.engine import resolve_device
from cvstream.studies.sweep import load_sweep, read_results



def _err(capsys) -> str:
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err
    return err


# -- scenario files ------------------------------------------------------------------------

def test_missing_scenario_file_exits_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: file not found" in _err(capsys)


def test_scenario_whose_top_level_is_not_a_mapping_exits_2(tmp_path, capsys):
    path = write_scenario(tmp_path, "- a\n- b\n")
    assert main(["validate", str(path)]) == 2
    assert "the top level must be a mapping of keys, got list" in _err(capsys)


def test_component_section_that_is_not_a_mapping_exits_2(tmp_path, capsys):
    path = write_scenario(tmp_path, tiny_dict(method=5))
    assert main(["validate", str(path)]) == 2
    assert "method: must be a mapping with a 'name' key" in _err(capsys)


@pytest.mark.parametrize(
    "item, expected",
    [("training.epochs", "expected key.path=value"), ("training..epochs=1", "empty key"), ("name.x=1", "name is not a mapping")],
)
def test_malformed_set_override_exits_2(tmp_path, capsys, item, expected):
    path = write_scenario(tmp_path, tiny_dict())
    assert main(["validate", str(path), "--set", item]) == 2
    assert expected in _err(capsys)


@pytest.mark.parametrize(
    "stream, expected",
    [
        ({"setup": "general", "sessions": 3, "initial_classes": 4, "classes_per_session": 4, "old_ratio": 0.4, "hold_back": 0}, "hold_back 0"),
        ({"setup": "explicit", "sessions": [[0, 1]], "class_order": [0, 1]}, "remove class_order"),
        ({"setup": "explicit", "sessions": [[0, 1], []]}, "session 1 lists no classes"),
        ({"setup": "explicit", "sessions": [[0, 0]]}, "lists class 0 twice"),
        ({"setup": "explicit", "sessions": [{0: 100}]}, "training samples left"),
    ],
    ids=["general-hold-back-0", "explicit-with-class-order", "explicit-empty-session", "explicit-class-twice", "explicit-too-many-samples"],
)
def test_cross_field_stream_checks_exit_2(tmp_path, capsys, stream, expected):
    path = write_scenario(tmp_path, tiny_dict(stream=stream))
    assert main(["validate", str(path)]) == 2
    err = _err(capsys)
    assert expected in err and "stream" in err


# -- untrusted input -----------------------------------------------------------------------

def test_yaml_python_tags_are_refused_by_the_safe_loader(tmp_path, capsys):
    marker = tmp_path / "ran"
    text = yaml.safe_dump(tiny_dict()) + f"evil: !!python/object/apply:os.system ['touch {marker}']\n"
    assert main(["validate", str(write_scenario(tmp_path, text))]) == 2
    assert "not valid YAML" in _err(capsys)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["os.system", "cvstream.cli:main", "__import__('os')"])
def test_a_method_name_is_looked_up_in_the_registry_never_imported(tmp_path, capsys, name):
    path = write_scenario(tmp_path, tiny_dict(method={"name": name}))
    assert main(["validate", str(path)]) == 2
    err = _err(capsys)
    assert "method.name" in err and "finetune" in err  # the message lists the registered methods


def test_a_checkpoint_holding_pickled_code_does_not_run_it(tmp_path):
    """state.pt is read with weights_only=True: a pickled call is refused, not executed."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = checkpoint.checkpoint_dir(tmp_path) / "session-0"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text("{}")
    torch.save({"model": Payload()}, folder / "state.pt")
    (folder.parent / "latest.json").write_text(json.dumps({"version": checkpoint.CHECKPOINT_VERSION, "session": 0, "folder": "session-0"}))
    with pytest.raises(UserError, match="state.pt: the checkpoint cannot be loaded .*UnpicklingError"):
        checkpoint.restore(SimpleNamespace(), tmp_path)
    assert not marker.exists()


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A finished two-session tiny run, marked failed so that --resume would continue it."""
    from cvstream.simulator import Simulator
    from conftest import tiny_scenario

    out = tmp_path_factory.mktemp("interrupted")
    Simulator(tiny_scenario(stream={"sessions": 2}), out_dir=out).run()
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**info, "status": "failed"}))
    return out


@pytest.mark.parametrize(
    "damaged", ["latest.json", "state.json", "state.pt", "arrays.npz", "metrics.parquet", "gallery/gallery-0000.faiss", "gallery/gallery-metadata/part-0001.parquet"]
)
def test_a_damaged_checkpoint_or_table_stops_resume_with_a_message(interrupted_run, tmp_path, capsys, damaged):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    folder = checkpoint.checkpoint_dir(run)
    target = {"latest.json": folder / "latest.json", "metrics.parquet": run / "metrics.parquet"}.get(damaged)
    target = target or next(folder.glob("session-*")) / damaged
    target.write_bytes(b"\x00garbage{")
    assert main(["run", "--resume", str(run), "--no-progress"]) == 2
    err = _err(capsys)
    assert damaged in err
    assert not (run / "run.lock").exists()


def test_a_checkpoint_missing_a_state_field_is_refused(interrupted_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    state_file = next(checkpoint.checkpoint_dir(run).glob("session-*")) / "state.json"
    values = json.loads(state_file.read_text())
    del values["replay_rng"]
    state_file.write_text(json.dumps(values))
    assert main(["run", "--resume", str(run), "--no-progress"]) == 2
    err = _err(capsys)
    assert "incomplete or damaged" in err and "replay_rng" in err


def test_report_on_a_damaged_table_is_a_user_error(interrupted_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    (run / "metrics.parquet").write_bytes(b"not parquet")
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 2
    assert "metrics.parquet cannot be read as Parquet" in _err(capsys)


# -- data sets -----------------------------------------------------------------------------

def _image_folder(root, **params):
    cls = DATASETS.get("image-folder")
    return cls(cls.Params(root="pets", **params), data_root=root, cache_dir=root / "cache", seed=0)


def test_image_folder_that_is_missing_empty_or_has_an_empty_class(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        _image_folder(tmp_path).label_set()
    (tmp_path / "pets").mkdir()
    with pytest.raises(DataError, match="holds no class folders"):
        _image_folder(tmp_path).label_set()
    (tmp_path / "pets" / "cat").mkdir()
    with pytest.raises(DataError, match="'cat' .* holds no images"):
        _image_folder(tmp_path).label_set()


def test_image_folder_with_an_impossible_channel_count(tmp_path):
    (tmp_path / "pets" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="channels must be 1 or 3") as info:
        _image_folder(tmp_path, channels=2).check()
    assert info.value.key_path == "dataset.channels"


# -- streams -------------------------------------------------------------------------------

GOOD = {"sample_id": [0, 1], "class_id": [0, 0], "session": [0, 0], "role": ["train", "query"], "home_session": [0, 0]}


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"drop": "role"}, "missing columns ['role']"),
        ({"role": ["train", "teach"]}, "unknown roles ['teach']"),
        ({"session": [0, -1]}, "negative sample, class or session ids"),
        ({"class_id": ["a", "b"]}, "must be integers"),
        ({"home_session": [0, 1]}, "has two home sessions"),
    ],
    ids=["missing-column", "unknown-role", "negative-id", "not-integers", "two-home-sessions"],
)
def test_a_malformed_stream_table_is_a_data_error_naming_stream_path(change, expected):
    frame = pd.DataFrame(GOOD)
    frame = frame.drop(columns=change["drop"]) if "drop" in change else frame.assign(**change)
    with pytest.raises(DataError, match=re.escape(expected)) as info:
        Stream.from_frame(frame, source="s.parquet")
    assert info.value.key_path == "stream.path"


# -- runs and files ------------------------------------------------------------------------

def test_run_with_both_a_scenario_and_resume_is_refused(tmp_path, capsys):
    path = write_scenario(tmp_path, tiny_dict())
    assert main(["run", str(path), "--resume", str(tmp_path), "--no-progress"]) == 2
    assert "give no scenario, --set or --out" in _err(capsys)


def test_run_without_a_scenario_is_refused(capsys):
    assert main(["run", "--no-progress"]) == 2
    assert "needs a scenario file" in _err(capsys)


def test_cuda_asked_for_without_a_device_is_a_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device is available"):
        resolve_device("cuda")


def test_an_out_folder_that_cannot_be_created_exits_2(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    path = write_scenario(tmp_path, tiny_dict())
    assert main(["run", str(path), "--out", str(tmp_path / "file" / "run"), "--no-progress"]) == 2
    assert "cannot create the run folder" in _err(capsys)


def test_an_unreadable_run_json_exits_2(tmp_path, capsys):
    (tmp_path / "run.json").write_text("{broken")
    assert main(["run", "--resume", str(tmp_path), "--no-progress"]) == 2
    assert "run.json cannot be read" in _err(capsys)


def test_a_checkpoint_of_another_version_is_refused(tmp_path):
    folder = checkpoint.checkpoint_dir(tmp_path)
    folder.mkdir()
    (folder / "latest.json").write_text(json.dumps({"version": 99, "session": 0, "folder": "session-0"}))
    with pytest.raises(UserError, match="incompatible cvstream \\(version 99\\)"):
        checkpoint.latest(tmp_path)


def test_tables_shorter_than_the_checkpoint_are_refused(tmp_path):
    pd.DataFrame({"session": [0, 0]}).to_parquet(tmp_path / "metrics.parquet")
    with pytest.raises(UserError, match="holds 2 rows, its checkpoint expects at least 5"):
        checkpoint._tables(tmp_path, {"metrics": 5})


# -- compare and sweep ---------------------------------------------------------------------

def test_compare_into_a_folder_that_holds_a_comparison_exits_2(tmp_path, capsys):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "comparison.parquet").write_bytes(b"")
    path = write_scenario(tmp_path, tiny_dict())
    assert main(["compare", str(path), "--out", str(out), "--backfill", "none,full", "--no-progress"]) == 2
    assert "already holds a comparison" in _err(capsys)


@pytest.mark.parametrize(
    "text, expected",
    [(None, "file not found"), ("[1, 2]", "the top level must be a mapping"), ("name: [1\n", "cannot read the sweep file")],
    ids=["missing", "not-a-mapping", "broken-yaml"],
)
def test_a_bad_sweep_file_is_a_scenario_error(tmp_path, text, expected):
    path = tmp_path / "sweep.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError, match=expected):
        load_sweep(path)


def test_sweep_results_of_a_sweep_that_never_ran(tmp_path):
    with pytest.raises(UserError, match="no results"):
        read_results(tmp_path)


# -- more data sets, runs and the gallery --------------------------------------------------

def test_a_fashion_mnist_file_that_is_not_idx_is_named(tmp_path):
    (tmp_path / "fm").mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / "fm" / stem).write_bytes(b"hello, not an idx file")
    cls = DATASETS.get("fashion-mnist")
    source = cls(cls.Params(root="fm"), data_root=tmp_path, cache_dir=tmp_path / "cache", seed=0)
    with pytest.raises(DataError, match="is not an IDX file of unsigned bytes"):
        source.label_set()


@pytest.mark.parametrize(
    "params, expected",
    [({"path": "f.csv"}, "neither .parquet nor .npy"), ({"path": "f.parquet", "labels": "klass"}, "no label column 'klass'")],
    ids=["wrong-suffix", "missing-label-column"],
)
def test_a_features_file_of_the_wrong_kind_is_named(tmp_path, params, expected):
    pd.DataFrame({"x": [0.0, 1.0], "label": [0, 1]}).to_parquet(tmp_path / "f.parquet")
    (tmp_path / "f.csv").write_text("x,label\n0,0\n")
    cls = DATASETS.get("features")
    with pytest.raises(DataError, match=re.escape(expected)):
        cls(cls.Params(**params), data_root=tmp_path, cache_dir=tmp_path / "cache", seed=0).label_set()


def test_a_lock_that_cannot_be_created_is_a_user_error(tmp_path):
    from cvstream.simulator.lock import RunLock

    with pytest.raises(UserError, match="cannot create .*run.lock: No such file or directory"):
        RunLock(tmp_path / "missing").acquire()


def test_a_saved_gallery_of_another_format_or_unreadable_is_a_user_error(tmp_path):
    from cvstream.gallery import Gallery
    from cvstream.scenario import GallerySpec

    gallery = Gallery(4, GallerySpec())
    vectors = np.eye(4, dtype=np.float32)
    gallery.add(vectors, sample_ids=np.arange(4), class_ids=np.arange(4), session=0, generation=0)
    gallery.save(tmp_path)
    info = json.loads((tmp_path / "gallery.json").read_text())
    (tmp_path / "gallery.json").write_text(json.dumps({**info, "format_version": -1}))
    with pytest.raises(UserError, match="format -1, expected"):
        Gallery.load(tmp_path)
    (tmp_path / "gallery.json").write_text("{broken")
    with pytest.raises(UserError, match="the saved gallery cannot be read"):
        Gallery.load(tmp_path)


def test_a_batch_that_processes_cannot_share_evenly_is_a_user_error():
    from cvstream.models.distributed import Shard, check_batch

    with pytest.raises(UserError, match="batch_size = 15 must be divisible by the 2 processes"):
        check_batch(15, Shard(rank=0, world_size=2))


def test_a_backfill_curve_session_past_the_stream_is_a_user_error():
    from conftest import tiny_scenario
    from cvstream.simulator import Simulator

    with pytest.raises(UserError, match="curve_session = 7, but the stream has 3 sessions"):
        Simulator(tiny_scenario(backfill={"policy": "none", "curve_session": 7}), write=False).run()  # refused in setup, before training


def test_validate_refuses_what_a_run_would_refuse_before_training(tmp_path, capsys):
    """`cvstream validate` asks the same preflight as every run: here a backfill curve past the stream's end."""
    path = write_scenario(tmp_path, tiny_dict(backfill={"policy": "none", "curve_session": 7}))
    assert main(["validate", str(path)]) == 2
    assert "curve_session = 7, but the stream has 3 sessions" in _err(capsys)
