"""The typed scenario: valid files load, bad ones name the file and the key path."""

from __future__ import annotations

import pytest

from conftest import REPO, tiny_dict, tiny_scenario
from cvstream.errors import ScenarioError
from cvstream.scenario import Scenario


def test_demo_scenario_loads_with_paper_defaults():
    scenario = Scenario.from_yaml(REPO / "experiments" / "demo.yaml")
    assert scenario.method.name == "cvs"
    assert scenario.method.params.alpha == 10 and scenario.method.params.beta == 1
    assert scenario.method.params.margin == 0.1 and scenario.method.params.temperature == 0.05
    assert scenario.stream.name == "disjoint"
    assert scenario.source.endswith("demo.yaml")


def test_round_trip_through_yaml_keeps_the_digest(tmp_path):
    scenario = Scenario.from_dict(tiny_dict())
    path = tmp_path / "s.yaml"
    path.write_text(scenario.to_yaml())
    again = Scenario.from_yaml(path)
    assert again.digest() == scenario.digest()
    assert again.to_dict() == scenario.to_dict()


def test_override_sets_nested_keys_with_yaml_types():
    scenario = Scenario.from_dict(tiny_dict(), overrides=["training.epochs=7", "method.alpha=2.5", "evaluation.recall_at=[1,5]"])
    assert scenario.training.epochs == 7
    assert scenario.method.params.alpha == 2.5
    assert scenario.evaluation.recall_at == [1, 5]


def test_override_can_switch_a_component_by_name():
    scenario = Scenario.from_dict(tiny_dict(method={"name": "cvs"}), overrides=["method=finetune"])
    assert scenario.method.name == "finetune"


@pytest.mark.parametrize(
    "data, key_path, words",
    [
        (tiny_dict(training={"epoch": 3}), "training.epoch", "did you mean 'epochs'"),
        (tiny_dict(training={"batch_size": "large"}), "training.batch_size", "integer"),
        (tiny_dict(method={"name": "cvs", "alpha": -1}), "method.alpha", "greater than or equal"),
        (tiny_dict(method={"name": "cvss"}), "method.name", "did you mean 'cvs'"),
        (tiny_dict(timeline={"eval_min_chnage": 0.1}), "timeline.eval_min_chnage", "did you mean 'eval_min_change'"),
        (tiny_dict(timeline={"accelerator": {"price_per_hr": 2}}), "timeline.accelerator.price_per_hr", "did you mean 'price_per_hour'"),
        (tiny_dict(timeline={"train_scale": 0.5}), "timeline.train_scale", "greater than or equal"),
        (tiny_dict(method={"name": "cvs", "alpah": 1}), "method.alpah", "did you mean 'alpha'"),
        (tiny_dict(stream={"setup": "disjoint", "sessions": 0}), "stream.sessions", "greater than"),
        (tiny_dict(device="gpu"), "device", "'auto', 'cpu' or 'cuda'"),
        ({**tiny_dict(), "extra_section": 1}, "extra_section", "unknown key"),
        (  # a key inside one entry of a mapping of sections: the entry's own keys are listed
            tiny_dict(model={"backbone": "convnet", "embedding_dim": 16, "upgrades": {1: {"backbone": "convnet", "embeding_dim": 32}}}),
            "model.upgrades.1.embeding_dim",
            "did you mean 'embedding_dim'?); allowed keys: backbone, embedding_dim, width",
        ),
    ],
)
def test_bad_values_name_the_key_path(data, key_path, words):
    with pytest.raises(ScenarioError) as info:
        Scenario.from_dict(data, source="bad.yaml")
    text = str(info.value)
    assert text.startswith("bad.yaml: ")
    assert key_path in text
    assert words in text


def test_missing_component_section_is_named():
    data = tiny_dict()
    del data["stream"]
    with pytest.raises(ScenarioError, match=r"bad.yaml: stream: missing section"):
        Scenario.from_dict(data, source="bad.yaml")


def test_broken_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nstream: {setup: disjoint\n")
    with pytest.raises(ScenarioError) as info:
        Scenario.from_yaml(path)
    assert str(path) in str(info.value) and "line" in str(info.value)


@pytest.mark.parametrize(
    "data, key_path, words",
    [
        (tiny_dict(backfill={"policy": "partial", "budget": 0.5, "order": "newest"}), "backfill.order",
         "unknown backfill order 'newest'; allowed: far-from-mean, oldest, random, uncertainty"),
        (tiny_dict(backfill={"policy": "sometimes"}), "backfill.policy", "allowed: full, none, partial, transform"),
        (tiny_dict(backfill={"curve_order": "olderst"}), "backfill.curve_order", "did you mean 'oldest'"),
        (tiny_dict(replay={"selection": "herd"}), "replay.selection", "did you mean 'herding'?); allowed: class-balanced, herding"),
        (tiny_dict(gallery={"index": "ivff"}), "gallery.index", "allowed: flat, hnsw, ivf, ivfpq"),
        (tiny_dict(evaluation={"metrics": ["ndcg"]}), "evaluation.metrics[0]", "unknown metric 'ndcg'; allowed: map@r"),
        (tiny_dict(evaluation={"metrics": ["map@r"]}), "evaluation.metrics", "its own key: evaluation.map_at_r"),
        (tiny_dict(backfill={"policy": "none", "budget": 3}), "backfill", "budget applies to policies partial and transform, not none"),
    ],
)
def test_every_registered_name_is_checked_against_its_registry(data, key_path, words):
    with pytest.raises(ScenarioError) as info:
        Scenario.from_dict(data, source="bad.yaml")
    text = str(info.value)
    assert text.startswith(f"bad.yaml: {key_path}: ") and words in text


def test_the_scenario_takes_the_gallerys_own_index_defaults():
    from cvstream.gallery.index import IndexSpec

    assert IndexSpec.of(Scenario.from_dict(tiny_dict()).gallery) == IndexSpec()


def test_every_problem_of_a_file_is_in_the_one_message(tmp_path, capsys):
    """An unknown key, a missing section, a wrong type and a component's unknown key: all four, in one message."""
    from conftest import tiny_dict, write_scenario
    from cvstream.cli import main

    data = tiny_dict()
    del data["method"]
    data["trainig"] = {"epochs": 2}
    data["gallery"] = {"indx": "flat"}
    data["dataset"]["clases"] = 3
    data["seed"] = "x"
    assert main(["validate", str(write_scenario(tmp_path, data))]) == 2
    err = capsys.readouterr().err
    for expected in ("method: missing section", "trainig: unknown key (did you mean 'training'?)",
                     "gallery.indx: unknown key (did you mean 'index'?)", "dataset.clases: unknown key (did you mean 'classes'?)",
                     "seed: Input should be a valid integer"):
        assert expected in err, expected
    assert "Traceback" not in err


def test_changing_a_component_by_name_drops_the_old_components_keys(tmp_path, capsys):
    from conftest import tiny_dict, write_scenario
    from cvstream.cli import main
    from cvstream.scenario import Scenario

    data = tiny_dict(method={"name": "cvs", "alpha": 5, "beta": 2, "margin": 0.2, "temperature": 0.1})
    scenario = Scenario.from_dict(data, overrides=["method.name=bct"])
    assert scenario.method.name == "bct" and scenario.method.params.temperature == 0.1  # a shared key stays
    assert scenario._notes == ["--set method.name=bct: dropped method.alpha, method.beta, method.margin "
                               "(cvs's parameters, which bct does not take)"]
    assert Scenario.from_dict(data, overrides=["method.alpha=7"])._notes == []  # no name change, nothing dropped
    assert main(["validate", str(write_scenario(tmp_path, data)), "--set", "method.name=bct"]) == 0
    assert "dropped method.alpha, method.beta, method.margin" in capsys.readouterr().err


def test_a_record_keeps_every_key_and_the_digest_leaves_new_defaults_out():
    scenario = Scenario.from_dict(tiny_dict())
    record = scenario.to_dict(complete=True)
    assert record["training"]["lr_every"] == "step" and record["gallery"]["narrow_queries"] == scenario.gallery.narrow_queries
    assert "lr_every" not in scenario.to_dict()["training"]  # the digest's form: unchanged for scenarios that do not use it
    assert Scenario.from_record(record).to_dict(complete=True) == record
    assert Scenario.from_dict(tiny_dict(training={"lr_every": "epoch"})).digest() != scenario.digest()


def test_a_record_from_before_a_default_changed_keeps_the_value_it_ran_with():
    from cvstream.scenario import GallerySpec

    old_form = Scenario.from_dict(tiny_dict()).to_dict()  # an older run.json: new keys left out at their baseline
    old_form["gallery"].pop("narrow_queries", None)
    assert GallerySpec.baseline("narrow_queries") == "pad"  # the default before normalize
    assert Scenario.from_record(old_form).gallery.narrow_queries == "pad"
    assert Scenario.from_dict(old_form).gallery.narrow_queries == GallerySpec().narrow_queries  # a user's file: today's default
    chosen = Scenario.from_dict(tiny_dict(gallery={"narrow_queries": "normalize"}))
    assert Scenario.from_record(chosen.to_dict()).gallery.narrow_queries == "normalize"


def test_timeline_keys_are_validated_with_the_key_path():
    with pytest.raises(ScenarioError, match="timeline.deploy"):
        tiny_scenario(timeline={"deploy": "later"})
    with pytest.raises(ScenarioError, match="timeline.accelerators.backfill"):
        tiny_scenario(timeline={"accelerators": {"backfill": 0}})
    with pytest.raises(ScenarioError, match="sessions_interval"):
        tiny_scenario(timeline={"sessions_interval": 3})
    assert "timeline" not in tiny_scenario().to_dict()  # absent stays absent (and the digest of old scenarios with it)
    assert tiny_scenario(timeline={}).timeline.session_interval_hours == 168
