"""Plugins: components added by a user's file (`--plugin FILE`) or an installed package (entry point), never by a scenario."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, tiny_dict, write_scenario
from cvstream.cli import main
from cvstream.plugins import ENTRY_POINT_GROUP, PluginError, load_plugin, module_name

ORDER_PLUGIN = """
    from cvstream.gallery.backfill import BACKFILL_ORDERS


    @BACKFILL_ORDERS.register("highest-id-first")
    def highest_id_first(candidates, *, gallery, rng, uncertainty):
        return candidates[::-1]
"""

SELECTION_AND_METRIC_PLUGIN = """
    import numpy as np

    from cvstream.evaluation.metrics import METRICS
    from cvstream.gallery.replay import REPLAY_SELECTIONS

    calls = []  # (class size, quota) of every selection, for the test to read


    @REPLAY_SELECTIONS.register("latest")
    def latest(vectors, m, rng):
        calls.append((len(vectors), m))
        return np.arange(len(vectors))[::-1][:m]


    @METRICS.register("precision@1", neighbors=1)
    def precision_at_1(neighbor_classes, query_classes, relevant):
        return (neighbor_classes[:, :1] == query_classes[:, None]).mean(axis=1)
"""


def run(tmp_path, plugins, *overrides, command="run"):
    """`cvstream <command> [--plugin P ...] SCENARIO --set ...` on the tiny scenario (finetune: quick); its exit status."""
    argv = [command, str(write_scenario(tmp_path, tiny_dict(method={"name": "finetune"})))]
    for path in plugins:
        argv += ["--plugin", str(path)]
    for item in overrides:
        argv += ["--set", item]
    if command == "run":
        argv += ["--out", str(tmp_path / "run"), "--no-progress"]
    return main(argv)


def test_a_plugin_order_decides_which_items_a_partial_backfill_re_embeds(tmp_path, plugin_file):
    path = plugin_file(ORDER_PLUGIN)
    assert run(tmp_path, [path], "backfill.policy=partial", "backfill.budget=0.5", "backfill.order=highest-id-first") == 0
    from cvstream.simulator import load_run

    gallery = load_run(tmp_path / "run").gallery
    backfilled = gallery.backfilled_at.astype("Int64")
    # 60 items a session. Session 1: half of 120 is all 60 stale ones. Session 2: 90 of the 120 stale
    # items (0..119), highest ids first: 119 down to 30; items 0..29 keep their session-1 vectors.
    assert (backfilled[gallery.item_id.between(30, 119)] == 2).all()
    assert (backfilled[gallery.item_id < 30] == 1).all()
    assert backfilled[gallery.item_id >= 120].isna().all()


def test_a_plugin_replay_selection_chooses_the_exemplars(tmp_path, plugin_file):
    path = plugin_file(SELECTION_AND_METRIC_PLUGIN)
    assert run(tmp_path, [path], "replay.selection=latest", "method=cvs") == 0
    calls = sys.modules[module_name(path.resolve())].calls
    # Buffer 24, 4 new classes a session of 15 training arrivals each: quotas 24 // 4, 24 // 8, 24 // 12.
    # A selection other than herding is offered a class only in the session its samples arrive.
    assert calls == [(15, 6)] * 4 + [(15, 3)] * 4 + [(15, 2)] * 4


def test_a_plugin_metric_is_computed_for_every_query_and_lands_in_metrics_parquet(tmp_path, plugin_file):
    path = plugin_file(SELECTION_AND_METRIC_PLUGIN)
    assert run(tmp_path, [path], "evaluation.metrics=[precision@1]") == 0
    metrics = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    mixed = metrics[metrics.gallery_view == "mixed"].set_index(["session", "subset"])
    precision = mixed[mixed.metric == "precision@1"].value
    recall = mixed[mixed.metric == "recall@1"].value.loc[precision.index]
    assert set(precision.index.get_level_values("session")) == {0, 1, 2}
    np.testing.assert_array_equal(precision.to_numpy(), recall.to_numpy())  # P@1 is R@1, query by query


def test_score_neighbors_computes_a_registered_metric_per_query(plugin_file):
    from cvstream.evaluation.evaluator import score_neighbors
    from cvstream.gallery import Gallery

    load_plugin(plugin_file(SELECTION_AND_METRIC_PLUGIN))
    gallery = Gallery(2)
    gallery.add(np.eye(2, dtype=np.float32)[[0, 1, 1]], sample_ids=np.arange(3), class_ids=np.array([0, 1, 1]), session=0, generation=0)
    item_ids = np.array([[0, 1], [2, 0], [0, -1]])  # the neighbours of three queries, best first
    scores = score_neighbors(item_ids, np.array([0, 0, 1]), gallery, recall_at=[2], map_at_r=False, metrics=["precision@1"])
    assert scores["precision@1"].tolist() == [1.0, 0.0, 0.0]
    assert scores["recall@2"].tolist() == [1.0, 1.0, 0.0]


def test_a_name_no_registry_holds_fails_validation_listing_the_plugins_names_too(tmp_path, plugin_file, capsys):
    path = plugin_file(ORDER_PLUGIN)
    assert run(tmp_path, [path], "backfill.policy=partial", "backfill.budget=0.5", "backfill.order=highest-first", command="validate") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "backfill.order" in err and "did you mean 'highest-id-first'" in err
    assert "allowed: far-from-mean, highest-id-first, oldest, random, uncertainty" in err and "Traceback" not in err


def test_without_the_plugin_its_name_is_unknown(tmp_path, capsys):
    assert run(tmp_path, [], "backfill.policy=partial", "backfill.budget=0.5", "backfill.order=highest-id-first", command="validate") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "unknown backfill order 'highest-id-first'; allowed: far-from-mean, oldest, random, uncertainty" in err


def test_compare_takes_a_plugin_order_in_its_variants(plugin_file):
    from cvstream.studies.compare import parse_variants

    load_plugin(plugin_file(ORDER_PLUGIN))
    assert parse_variants("partial:0.5:highest-id-first")[0].order == "highest-id-first"


@pytest.mark.parametrize(("source", "words"), [
    ("raise RuntimeError('no licence')\n", "cannot be imported: RuntimeError: no licence (line 1)"),
    ("def broken(:\n", "cannot be imported: SyntaxError"),
    ("from cvstream.gallery.backfill import BACKFILL_ORDERS\nBACKFILL_ORDERS.register('random')(lambda c, **k: c)\n",
     "backfill order 'random' registered twice"),
])
def test_a_plugin_that_cannot_load_is_exit_2_naming_the_file(tmp_path, plugin_file, capsys, source, words):
    path = plugin_file(source, name="bad_plugin.py")
    assert run(tmp_path, [path], command="validate") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"plugin {path.resolve()}" in err and words in err and "Traceback" not in err


def test_a_plugin_that_fails_half_way_leaves_nothing_registered(plugin_file):
    from cvstream.gallery.backfill import BACKFILL_ORDERS

    path = plugin_file(textwrap.dedent(ORDER_PLUGIN) + "\nraise ImportError('a dependency is missing')\n")
    with pytest.raises(PluginError, match="ImportError: a dependency is missing"):
        load_plugin(path)
    assert "highest-id-first" not in BACKFILL_ORDERS
    assert module_name(path.resolve()) not in sys.modules


def test_a_failing_plugin_is_rolled_back_in_every_registry_the_trackers_and_methods_too(plugin_file):
    from cvstream.models.methods.base import METHODS
    from cvstream.registry import Registry
    from cvstream.simulator.trackers import TRACKERS

    path = plugin_file("""
        from cvstream.models.methods.base import METHODS
        from cvstream.simulator.trackers import TRACKERS


        @TRACKERS.register("my-tracker")
        class MyTracker:
            pass


        @METHODS.register("my-method")
        class MyMethod:
            pass


        raise RuntimeError("half-way")
    """)
    with pytest.raises(PluginError, match="RuntimeError: half-way"):
        load_plugin(path)
    assert "my-tracker" not in TRACKERS and "my-method" not in METHODS
    assert TRACKERS in Registry.every() and METHODS in Registry.every()


def test_load_plugin_imports_a_file_once(plugin_file, tmp_path):
    from cvstream.gallery.backfill import BACKFILL_ORDERS

    path = plugin_file(ORDER_PLUGIN)
    first = load_plugin(path)
    assert load_plugin(str(path)) is first and "highest-id-first" in BACKFILL_ORDERS  # no second registration
    with pytest.raises(PluginError, match="no such file"):
        load_plugin(tmp_path / "missing.py")


def installed_plugin(tmp_path, monkeypatch, source: str, *, module: str = "cvstream_test_installed") -> None:
    """An installed package on sys.path: its module, and a dist-info whose entry point names it."""
    site = tmp_path / "site"
    (site / "cvstream_test_installed-1.0.dist-info").mkdir(parents=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    (site / "cvstream_test_installed-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: cvstream-test-installed\nVersion: 1.0\n")
    (site / "cvstream_test_installed-1.0.dist-info" / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nmine = {module}\n")
    monkeypatch.syspath_prepend(str(site))


def test_an_installed_package_registers_through_its_entry_point(tmp_path, monkeypatch, plugin_file, capsys):
    installed_plugin(tmp_path, monkeypatch, ORDER_PLUGIN)
    assert run(tmp_path, [], "backfill.policy=partial", "backfill.budget=0.5", "backfill.order=highest-id-first", command="validate") == 0
    assert "valid" in capsys.readouterr().out


def test_a_broken_entry_point_is_exit_2_naming_it(tmp_path, monkeypatch, plugin_file, capsys):
    installed_plugin(tmp_path, monkeypatch, "import a_module_that_does_not_exist\n")
    assert run(tmp_path, [], command="validate") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "plugin mine (entry point 'cvstream_test_installed' of cvstream-test-installed" in err
    assert "ModuleNotFoundError" in err and "Traceback" not in err


def test_a_scenario_file_cannot_name_code_to_run(tmp_path, capsys):
    data = tiny_dict()
    data["plugins"] = [str(tmp_path / "evil.py")]
    (tmp_path / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    assert main(["validate", str(write_scenario(tmp_path, data))]) == 2
    assert "plugins: unknown key" in " ".join(capsys.readouterr().err.split()) and not (tmp_path / "ran").exists()


def test_a_sweep_task_loads_its_plugins_in_a_fresh_process(tmp_path, plugin_file):
    """What a Ray worker does: a new interpreter gets the task, loads the plugin by path, then reads the scenario."""
    path = plugin_file(ORDER_PLUGIN)
    scenario = write_scenario(tmp_path, tiny_dict(method={"name": "finetune"}, stream={"sessions": 2}))
    code = f"""
import sys
from cvstream.studies.sweep import RunTask, SweepRun, execute
run = SweepRun(index=0, scenario={str(scenario)!r}, overrides=("backfill.policy=partial", "backfill.budget=0.5", "backfill.order=highest-id-first"))
outcome = execute(RunTask(run=run, run_dir={str(tmp_path / 'task')!r}, data_root=None, plugins=({str(path.resolve())!r},)))
print(outcome["status"], outcome["error"])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.stdout.strip() == "completed", done.stdout + done.stderr
