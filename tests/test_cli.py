"""Bad input through the command line: exit status 2, one message naming file and key, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import tiny_dict, write_scenario
from cvstream.cli import main



@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize(
    "data, expected",
    [
        (tiny_dict(training={"epochz": 1}), "training.epochz"),
        (tiny_dict(training={"lr": "fast"}), "training.lr"),
        (tiny_dict(stream={"setup": "disjoint", "sessions": 3, "initial_classes": 10, "classes_per_session": 10}), "stream.initial_classes"),
        (tiny_dict(dataset={"name": "omniglot", "root": "no-such-folder"}), "no-such-folder"),
    ],
    ids=["unknown-key", "wrong-type", "impossible-stream", "missing-data-root"],
)
def test_bad_scenarios_exit_2_with_a_message(tmp_path, capsys, command, data, expected):
    if data["dataset"]["name"] == "omniglot":
        data["dataset"] = {"name": "omniglot", "root": "no-such-folder"}
    path = write_scenario(tmp_path, data)
    args = [command, str(path), "--data-root", str(tmp_path)]
    if command == "run":
        args += ["--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(path) in err.replace("\n", "")
    assert expected in err.replace("\n", "")
    assert "Traceback" not in err


def test_impossible_stream_says_how_many_classes_exist(tmp_path, capsys):
    path = write_scenario(tmp_path, tiny_dict(stream={"setup": "disjoint", "sessions": 5, "initial_classes": 4, "classes_per_session": 4}))
    assert main(["validate", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "needs 20 classes, the data set has 12" in err


def test_validate_accepts_a_good_file(tmp_path, capsys):
    path = write_scenario(tmp_path, tiny_dict())
    assert main(["validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


def test_console_script_exits_2_without_traceback(tmp_path):
    path = write_scenario(tmp_path, tiny_dict(model={"backbone": "convnett"}))
    done = subprocess.run([sys.executable, "-m", "cvstream.cli", "validate", str(path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "model.backbone" in done.stderr and "did you mean 'convnet'" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr


def test_override_from_the_command_line_is_validated(tmp_path, capsys):
    path = write_scenario(tmp_path, tiny_dict())
    assert main(["validate", str(path), "--set", "training.epochs=-1"]) == 2
    assert "training.epochs" in capsys.readouterr().err


def test_tables_printed_into_a_log_keep_their_headers(tmp_path, capsys, monkeypatch):
    """Not a terminal (here: captured, as in CI or `> log`): rich must not cut the headers to dots."""
    from conftest import tiny_dict, write_scenario

    monkeypatch.delenv("COLUMNS", raising=False)
    path = write_scenario(tmp_path, tiny_dict())
    assert main(["stream", str(path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    for header in ("new classes", "old present", "future present", "training samples", "off-home share", "queries"):
        assert header in out


def test_compare_reuses_the_default_generation_store_and_store_clear_empties_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CVSTREAM_CACHE", str(tmp_path / "cache"))
    path = write_scenario(tmp_path, tiny_dict(stream={"sessions": 2}, method={"name": "bct"}, evaluation={"probe_items": 0}))
    for out in ("a", "b"):
        assert main(["compare", str(path), "--backfill", "none,full", "--out", str(tmp_path / out), "--no-progress"]) == 0
    import pandas as pd

    reused = [pd.read_parquet(tmp_path / "b" / v / "costs.parquet").query("phase == 'train'").reused.tolist() for v in ("none", "full")]
    assert reused == [[True, True], [True, True]]  # bct reads no gallery: every session of both variants, trained once in `a`
    capsys.readouterr()
    assert main(["store", "info"]) == 0 and "2 stored generations" in capsys.readouterr().out
    assert main(["store", "clear"]) == 0 and "removed 2" in capsys.readouterr().out
    assert main(["compare", str(path), "--backfill", "none", "--out", str(tmp_path / "c"), "--no-store", "--no-progress"]) == 0
    assert main(["store", "info"]) == 0 and "0 stored generations" in capsys.readouterr().out.splitlines()[-1]
