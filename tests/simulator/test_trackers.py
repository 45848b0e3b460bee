"""`output.trackers`: TensorBoard and MLflow get the rows metrics.parquet and costs.parquet hold, read back
with each library's own reader; a tracker that cannot write is reported once and the run completes."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from cvstream.errors import ScenarioError
from cvstream.scenario import Scenario
from cvstream.simulator import Hook, Simulator
from cvstream.simulator.trackers import COST_COLUMNS, TensorBoardTracker, mlflow_key
from conftest import tiny_dict, tiny_scenario

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def _scenario(trackers, **sections):
    return tiny_scenario(output={"trackers": trackers}, evaluation={"probe_items": 16}, **sections)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("trackers") / "run"
    result = Simulator(_scenario(["tensorboard", "mlflow"]), out_dir=out).run()
    assert result.status == "completed"
    return out


def _expected(run_dir) -> dict[tuple[str, int], list[float]]:
    """(TensorBoard tag, step) -> values, from the Parquet files."""
    metrics, costs = pd.read_parquet(run_dir / "metrics.parquet"), pd.read_parquet(run_dir / "costs.parquet")
    out: dict[tuple[str, int], list[float]] = {}
    for row in metrics.itertuples():
        out.setdefault((f"{row.metric}/{row.gallery_view}/{row.subset}", row.session), []).append(float(row.value))
    for row in costs.itertuples():
        for column in COST_COLUMNS:
            out.setdefault((f"costs/{row.phase}/{column}", row.session), []).append(float(getattr(row, column)))
    return out


def _tensorboard_events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _assert_tensorboard_holds_the_parquet_rows(run_dir):
    """Every (tag, step) of the Parquet files, with its values, once; nothing else."""
    events = _tensorboard_events(run_dir)
    expected = _expected(run_dir)
    assert set(events.Tags()["scalars"]) == {tag for tag, _ in expected}
    found: dict[tuple[str, int], list[float]] = {}
    for tag in events.Tags()["scalars"]:
        for event in events.Scalars(tag):
            found.setdefault((tag, event.step), []).append(event.value)
    assert found.keys() == expected.keys()
    for key, values in expected.items():  # TensorBoard keeps float32
        np.testing.assert_allclose(found[key], values, rtol=1e-6, atol=1e-30, err_msg=str(key))


def _assert_mlflow_holds_the_parquet_rows(run_dir, uri, run_id, *, timings: bool = True):
    """As for TensorBoard; with `timings` False, the `seconds` costs only once per step, whatever their value."""
    from mlflow.tracking import MlflowClient

    expected = _expected(run_dir)
    client = MlflowClient(tracking_uri=uri)
    for tag in {tag for tag, _ in expected}:
        history = client.get_metric_history(run_id, mlflow_key(tag))
        found = {}
        for m in history:
            found.setdefault(m.step, []).append(m.value)
        want = {step: values for (t, step), values in expected.items() if t == tag}
        assert found.keys() == want.keys(), tag
        for step in want:  # MLflow keeps float64: the same numbers
            if not timings and tag.endswith("/seconds"):
                assert len(found[step]) == len(want[step]), f"{tag} step {step}"
                continue
            np.testing.assert_array_equal(sorted(found[step]), sorted(want[step]), err_msg=f"{tag} step {step}")


def test_tensorboard_event_files_hold_every_metric_and_cost_row(run_dir):
    events = _tensorboard_events(run_dir)
    assert "recall@1/mixed/all" in events.Tags()["scalars"] and "costs/train/backbone_flops" in events.Tags()["scalars"]
    _assert_tensorboard_holds_the_parquet_rows(run_dir)
    text = events.Tensors("scenario/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "name: synthetic" in text and "setup: disjoint" in text


def test_mlflow_run_holds_every_metric_and_cost_row_and_the_scenario(run_dir, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{run_dir.resolve() / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    runs = mlflow.search_runs(experiment_names=["tiny"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.cvstream.run_id"] == pd.read_json(run_dir / "run.json", typ="series")["run_id"]
    assert run["params.dataset.name"] == "synthetic" and run["params.stream.sessions"] == "3"
    expected = _expected(run_dir)
    last = max(step for _, step in expected)
    assert run["metrics.recall_at_1/mixed/all"] == expected[("recall@1/mixed/all", last)][-1]
    _assert_mlflow_holds_the_parquet_rows(run_dir, uri, run["run_id"])
    client = MlflowClient(tracking_uri=uri)
    (run_dir / "dl").mkdir(exist_ok=True)
    scenario = client.download_artifacts(run["run_id"], "scenario.yaml", str(run_dir / "dl"))
    assert "name: synthetic" in open(scenario).read()


class _KilledAfterSending(Hook):
    """Stops the run after the trackers sent `session`'s rows and before its checkpoint: the session runs again."""

    def __init__(self, session: int):
        self.session = session

    def after_session(self, sim, result) -> None:
        if result.session == self.session:
            raise KeyboardInterrupt


def test_a_session_sent_before_a_kill_is_not_sent_twice_on_resume(tmp_path, monkeypatch):
    import mlflow

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Simulator(_scenario(["tensorboard", "mlflow"]), out_dir=out, hooks=[_KilledAfterSending(1)]).run()
    assert Simulator(Scenario.from_run(out), out_dir=out, resume=True).run().status == "completed"
    _assert_tensorboard_holds_the_parquet_rows(out)  # session 1's first events are purged
    uri = f"sqlite:///{out.resolve() / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    runs = mlflow.search_runs(experiment_names=["tiny"])
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED" and runs.iloc[0]["tags.cvstream.logged_through"] == "2"
    # Session 1's points once: those of its first run, which the seeded rerun repeats but for its timings.
    _assert_mlflow_holds_the_parquet_rows(out, uri, runs.iloc[0]["run_id"], timings=False)


def test_mlflow_tracking_uri_from_the_environment_is_honoured(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # that store keeps its artifacts where MLflow puts them by default: ./mlruns
    Simulator(_scenario(["mlflow"], stream={"sessions": 2}), out_dir=tmp_path / "run").run()
    assert not (tmp_path / "run" / "mlruns").exists()
    runs = mlflow.search_runs(experiment_names=["tiny"])
    assert len(runs) == 1 and runs.iloc[0]["metrics.recall_at_1/mixed/all"] >= 0


def test_a_tracker_that_cannot_write_warns_once_and_the_run_completes(tmp_path, monkeypatch, capsys):
    calls = []

    def full_disk(self, metrics, costs, *, session):
        calls.append(session)
        raise OSError("No space left on device")

    monkeypatch.setattr(TensorBoardTracker, "log_rows", full_disk)
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")] + ["mlflow"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if mlflow were not installed
    result = Simulator(_scenario(["tensorboard", "mlflow"]), out_dir=tmp_path / "run").run()
    err = " ".join(capsys.readouterr().err.split())
    assert result.status == "completed" and len(pd.read_parquet(tmp_path / "run" / "metrics.parquet")) > 0
    assert calls == [0]  # dropped after its first failure
    assert err.count("warning: tracker tensorboard stopped (OSError: No space left on device)") == 1
    assert err.count("warning: tracker mlflow stopped") == 1 and "pip install 'cvstream[trackers]'" in err
    assert err.count("warning:") == 2


def test_an_unknown_tracker_is_an_error_that_lists_the_known_ones():
    from cvstream.scenario import Scenario

    with pytest.raises(ScenarioError) as error:
        Scenario.from_dict(tiny_dict(output={"trackers": ["tensorboard", "wandb"]}), source="s.yaml")
    message = str(error.value)
    assert "output.trackers" in message and "'wandb'" in message and "allowed: mlflow, tensorboard" in message
    assert Scenario.from_dict(tiny_dict(), source="s.yaml").output.trackers == []
