"""Hooks: README's example hook runs as written, and its rows land in metrics.parquet; a misspelt moment is refused."""

from __future__ import annotations

import re

import pytest

from conftest import REPO, tiny_scenario


def readme_hook_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return next(block for block in blocks if "(Hook)" in block)


def test_the_readme_hook_example_runs_and_adds_a_row_per_session(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run's folder goes under output.dir, relative to here
    names = {"scenario": tiny_scenario(method={"name": "finetune"})}
    exec(compile(readme_hook_example(), "README.md", "exec"), names)
    rows = names["result"].metrics.query("metric == 'gallery_items'")
    assert rows.session.tolist() == [0, 1, 2]
    assert rows.value.tolist() == names["result"].gallery.groupby("session_added").size().cumsum().tolist()
    assert (tmp_path / "runs" / "tiny").is_dir()


def test_a_hook_method_named_like_a_moment_that_is_none_is_refused_naming_the_closest():
    from cvstream.errors import UserError
    from cvstream.simulator import Hook

    with pytest.raises(UserError, match="'after_trainig' is not a moment \\(did you mean 'after_training'\\?\\)"):
        class Misspelt(Hook):
            def after_trainig(self, sim, outcome): ...

    class Helper(Hook):  # a helper method that is not named like a moment is the hook's own business
        def summary(self): ...


def test_a_plugin_whose_hook_misspells_a_moment_is_refused_at_load(plugin_file):
    from cvstream.plugins import PluginError, load_plugin

    path = plugin_file("""
        from cvstream.simulator import Hook


        class Mine(Hook):
            def after_evaluaton(self, sim, outcome): ...
    """)
    with pytest.raises(PluginError, match="did you mean 'after_evaluation'"):
        load_plugin(path)


def test_after_run_receives_the_status_and_what_the_driver_recorded():
    from cvstream.simulator import Hook, Simulator

    class Ends(Hook):
        def after_run(self, sim, status, record):
            self.ended = (status, record)

    hook = Ends()
    sim = Simulator(tiny_scenario(stream={"sessions": 1}, method={"name": "finetune"}), write=False, hooks=[hook])
    with sim.running() as record:
        sim.run_session(0)
        record["summary"] = {"served": 1}
    assert hook.ended == ("completed", {"summary": {"served": 1}})
