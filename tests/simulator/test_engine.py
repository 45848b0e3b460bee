"""The session as one function: its steps in their one order, hooks that measure, the run state it carries."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import tiny_scenario
from cvstream.simulator import Hook, Simulator

STEPS = ["session_start", "train", "deploy", "index", "replay", "transform", "backfill", "evaluate", "session_end"]


class Recording(Hook):
    def __init__(self):
        self.seen: list[tuple[str, int]] = []

    def before_session(self, sim, session):
        self.seen.append(("before_session", session))

    def after_training(self, sim, outcome):
        self.seen.append(("after_training", outcome.generation))

    def after_deploy(self, sim, outcome):
        self.seen.append(("after_deploy", outcome.generation))

    def after_evaluation(self, sim, outcome):
        self.seen.append(("after_evaluation", outcome.generation))
        # a hook that measures: its rows land in metrics.parquet
        return [{"metric": "gallery_items", "value": float(len(sim.gallery)), "gallery_view": "mixed"}]

    def after_session(self, sim, result):
        self.seen.append(("after_session", result.session))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    hook = Recording()
    result = Simulator(tiny_scenario(), out_dir=tmp_path_factory.mktemp("engine"), hooks=[hook]).run()
    return hook, result


def test_each_session_runs_its_steps_in_the_one_order(recorded):
    hook, result = recorded
    expected = []
    for t in range(3):  # every session trains (tiny: generation t)
        expected += [("before_session", t), ("after_training", t), ("after_deploy", t), ("after_evaluation", t), ("after_session", t)]
    assert hook.seen == expected
    assert result.events.kind.tolist() == STEPS * 3 and result.events.event_index.tolist() == list(range(27))


def test_a_hook_can_add_metric_rows(recorded):
    _, result = recorded
    on_disk = pd.read_parquet(result.run_dir / "metrics.parquet")
    rows = on_disk[on_disk.metric == "gallery_items"]
    sizes = result.gallery.groupby("session_added").size().cumsum().tolist()
    assert rows.session.tolist() == [0, 1, 2] and rows.value.tolist() == sizes
    assert (rows.subset == "all").all() and (rows.gallery_view == "mixed").all()


def test_a_metric_row_with_an_unknown_column_is_refused():
    class Bad(Hook):
        def after_training(self, sim, outcome):
            return [{"metric": "x", "value": 1.0, "colour": "red"}]

    with pytest.raises(ValueError, match="colour"):
        Simulator(tiny_scenario(stream={"sessions": 1}), write=False, hooks=[Bad()]).run()


def test_a_step_that_timed_zero_seconds_keeps_its_zero(monkeypatch):
    """A step that measured its own work records that figure, even 0.0; only one that did not gets its wall time."""
    import time

    from cvstream.simulator.events import Outcome

    def start(self, t):
        time.sleep(0.01)
        return Outcome(generation=self.generation, seconds=0.0), None

    monkeypatch.setattr(Simulator, "start", start)
    result = Simulator(tiny_scenario(stream={"sessions": 1}, method={"name": "finetune"}), write=False).run()
    seconds = result.events.set_index("kind").seconds
    assert seconds["session_start"] == 0.0 and seconds["deploy"] > 0.0


def test_a_session_returns_its_generation_costs_and_metric_rows():
    sim = Simulator(tiny_scenario(stream={"sessions": 2}, method={"name": "finetune"}), write=False)
    with sim.running():
        results = [sim.run_session(t) for t in range(2)]
    tables = sim.result()
    for t, result in enumerate(results):
        assert (result.session, result.generation) == (t, t) and result.model is None  # no timeline: no generation kept
        assert list(result.costs) == tables.costs[tables.costs.session == t].to_dict("records")
        assert list(result.metrics) == tables.metrics[tables.metrics.session == t].to_dict("records")
        assert result.cost("train")["items"] > 0
    with pytest.raises(AttributeError):
        results[0].generation = 5  # frozen


def test_a_scenario_with_a_timeline_section_is_not_run_by_the_engine_alone():
    from cvstream.errors import UserError

    with pytest.raises(UserError, match=r"cvstream\.timeline\.run"):
        Simulator(tiny_scenario(timeline={}), write=False).run()
