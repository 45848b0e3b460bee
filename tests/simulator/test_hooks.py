"""Hooks: README's example hook runs as written, and its rows land in metrics.parquet."""

from __future__ import annotations

import re

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
