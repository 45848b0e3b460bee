"""A method added by a plugin file, without editing cvstream, runs a whole scenario and reports its own term."""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager

import pytest

from conftest import tiny_scenario
from cvstream.errors import ScenarioError
from cvstream.models.methods import METHODS
from cvstream.plugins import load_plugin, module_name
from cvstream.simulator import Simulator

PLUGIN = '''
"""finetune plus a small pull of each even-class embedding towards the batch's mean embedding."""

from cvstream.models.methods import METHODS
from cvstream.models.methods.finetune import Finetune


@METHODS.register("my-method")
class MyMethod(Finetune):
    loss_terms = frozenset({"ce", "spread"})

    def loss(self, model, batch, context):
        terms = super().loss(model, batch, context)
        even = batch.class_ids % 2 == 0
        spread = ((batch.embeddings - batch.embeddings.mean(dim=0)) ** 2).sum(dim=1)
        terms["spread"] = 0.01 * (spread * even).sum() / len(spread)
        batch.covered["spread"] = even
        return terms
'''


@contextmanager
def _loaded(tmp_path):
    path = tmp_path / "my_method.py"
    path.write_text(PLUGIN)
    before = METHODS.snapshot()
    try:
        load_plugin(path)
        yield "my-method"
    finally:
        METHODS.restore(before)  # other tests see cvstream's own methods only
        sys.modules.pop(module_name(path.resolve()), None)


@pytest.fixture
def plugin_method(tmp_path):
    with _loaded(tmp_path) as name:
        yield name


def test_a_plugin_method_runs_a_scenario_and_reports_its_term(plugin_method):
    assert plugin_method in METHODS
    result = Simulator(tiny_scenario(stream={"sessions": 2}, method={"name": plugin_method}), write=False).run()
    events = result.events
    details = [json.loads(d) for d in events[events.kind == "train"].detail]
    assert len(details) == 2
    for detail in details:
        assert set(detail["loss"]) == {"ce", "spread"} and math.isfinite(detail["loss"]["spread"])
        # The extra term acted on the even-class samples only: some, not all, of what L_c acted on.
        assert 0 < detail["term_samples"]["spread"] < detail["term_samples"]["ce"]


def test_the_plugin_method_is_unregistered_afterwards(tmp_path):
    with _loaded(tmp_path) as name:
        assert tiny_scenario(method={"name": name}).method.name == name
    assert name not in METHODS
    with pytest.raises(ScenarioError, match="unknown method 'my-method'"):
        tiny_scenario(method={"name": name})
