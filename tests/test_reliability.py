"""Failures a user can cause never cost a result: locks, write failures, mutated scenario files."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY, tiny_dict, tiny_scenario
from cvstream.cli import main
from cvstream.errors import UserError
from cvstream.simulator import Simulator, load_run
from cvstream import files as outputs  # the atomic writer every table goes through
from cvstream.simulator.lock import RunLock


def test_a_live_lock_refuses_a_second_writer(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "run.lock").write_text(f"{sleeper.pid}\n")
        sim = Simulator(tiny_scenario(stream={"sessions": 1}), out_dir=tmp_path)
        with pytest.raises(UserError, match=f"another run \\(pid {sleeper.pid}"):
            sim.run()
        assert not (tmp_path / "metrics.parquet").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run.lock").write_text(done.stdout)  # that process has exited
    Simulator(tiny_scenario(stream={"sessions": 1}), out_dir=tmp_path).run()
    assert not (tmp_path / "run.lock").exists()
    assert load_run(tmp_path).status == "completed"


SECOND_WRITER = """
import sys
from cvstream.errors import UserError
from cvstream.simulator.lock import RunLock
try:
    RunLock(sys.argv[1]).acquire()
except UserError as exc:
    print("refused:", exc)
    sys.exit(3)
print("taken")
"""


def test_a_held_lock_refuses_a_second_process_until_released(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    assert (tmp_path / "run.lock").read_text().strip() == str(os.getpid())
    second = subprocess.run([sys.executable, "-c", SECOND_WRITER, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert second.returncode == 3 and f"pid {os.getpid()}" in second.stdout
    first.release()
    assert not (tmp_path / "run.lock").exists()
    second = subprocess.run([sys.executable, "-c", SECOND_WRITER, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and "taken" in second.stdout


def test_a_full_disk_mid_run_keeps_completed_sessions(tmp_path, monkeypatch, capsys):
    """The second session's metrics write fails: exit 2, a message, session 0's files still load."""
    real = outputs._atomic
    calls = {"metrics": 0}

    def failing(path, write):
        if path.name == "metrics.parquet":
            calls["metrics"] += 1
            if calls["metrics"] == 2:
                raise_disk_full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real(path, lambda tmp: (write(tmp), (_ for _ in ()).throw(raise_disk_full)))
        return real(path, write)

    monkeypatch.setattr(outputs, "_atomic", failing)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_dict()))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "cannot write" in err and "metrics.parquet" in err and "No space left on device" in err
    assert "Traceback" not in err
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # no temporary file left behind
    run = load_run(out)
    assert run.status == "failed"
    assert set(run.metrics.session) == {0}
    assert (run.events.session == 0).all()
    assert not (out / "run.lock").exists()

    # the disk has room again: --resume finishes the run with the numbers an uninterrupted run gets
    monkeypatch.setattr(outputs, "_atomic", real)
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    resumed = load_run(out)
    assert resumed.status == "completed"
    clean = tmp_path / "clean"
    assert main(["run", str(path), "--out", str(clean), "--no-progress"]) == 0
    columns = ["session", "query_generation", "gallery_view", "subset", "metric", "n_queries"]
    got = resumed.metrics.sort_values(columns).reset_index(drop=True)
    want = load_run(clean).metrics.sort_values(columns).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[columns], want[columns])
    np.testing.assert_allclose(got.value.to_numpy(), want.value.to_numpy(), rtol=0, atol=1e-6)


# -- mutated scenario files: every one ends in exit 2, a key path or a YAML position, no traceback --

def _leaves(node, prefix=()):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


LEAVES = list(_leaves(TINY))
MAPPINGS = [()] + [(key,) for key, value in TINY.items() if isinstance(value, dict)]
REQUIRED = [("name",), ("dataset",), ("stream",), ("method",), ("dataset", "name"), ("stream", "setup"), ("method", "name")]


def _set(data, path, value):
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _delete(data, path):
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]


@st.composite
def mutations(draw):
    data = tiny_dict()
    kind = draw(st.sampled_from(["wrong_type", "out_of_range", "unknown_key", "missing", "broken_yaml"]))
    if kind == "wrong_type":
        path, value = draw(st.sampled_from(LEAVES))
        bad = [1, 2] if isinstance(value, str) else draw(st.sampled_from(["lots", "1e-x", {"a": 1}]))
        _set(data, path, bad)
        return yaml.safe_dump(data), ".".join(path)
    if kind == "out_of_range":
        path, _ = draw(st.sampled_from([(p, v) for p, v in LEAVES if isinstance(v, (int, float)) and not isinstance(v, bool)]))
        _set(data, path, draw(st.sampled_from([-1, -5, -0.5, -(10**6)])))
        return yaml.safe_dump(data), ".".join(path)
    if kind == "unknown_key":
        parent = draw(st.sampled_from(MAPPINGS))
        name = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12).filter(lambda s: s not in {"name", "seed", "device", "model", "training", "replay", "gallery", "backfill", "evaluation", "output", "sessions", "setup"}))
        node = data
        for key in parent:
            node = node[key]
        if name in node:
            name = name + "_x"
        node[name] = 1
        return yaml.safe_dump(data), ".".join(parent + (name,))
    if kind == "missing":
        path = draw(st.sampled_from(REQUIRED))
        _delete(data, path)
        return yaml.safe_dump(data), ".".join(path)
    text = yaml.safe_dump(data)
    breakage = draw(st.sampled_from(["oops: [1, 2\n", "dataset: {name: synthetic\n", "\tname: tabbed\n", "training:\n  epochs: 1\n bad_indent: 2\n"]))
    return text + breakage, "line"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mutations())
def test_every_mutated_scenario_exits_2_naming_the_key(tmp_path, capsys, case):
    text, expected = case
    path = tmp_path / "mutated.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err
    assert str(path) in err
    assert expected in err, err


@pytest.mark.parametrize("damage", ["truncated", "not-a-zip", "labels-disagree"])
def test_a_damaged_omniglot_file_is_named_before_training(tmp_path, capsys, damage):
    import numpy as np

    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    images = np.ones((4, 20, 105, 105), dtype=bool)
    labels = np.repeat(np.arange(4 if damage != "labels-disagree" else 3), 20).reshape(-1, 20)
    for name in ("images_background.npz", "images_evaluation.npz"):
        np.savez(folder / name, images=images, labels=labels)
    broken = folder / "images_background.npz"
    if damage == "truncated":
        broken.write_bytes(broken.read_bytes()[:5000])
    elif damage == "not-a-zip":
        broken.write_bytes(b"this is not an npz file")
    data = tiny_dict(dataset={"name": "omniglot", "root": "omniglot", "image_size": 16},
                     stream={"setup": "disjoint", "sessions": 2, "initial_classes": 2, "classes_per_session": 2})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    code = main(["run", str(path), "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--no-progress"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2, err
    assert "images_background.npz" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "metrics.parquet").exists()  # stopped before any training
