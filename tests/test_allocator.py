"""The command line starts itself once under the tuned C allocator (cvstream/allocator.py), where it can and may."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cvstream.allocator as allocator
from cvstream.allocator import OPT_OUT, SETTINGS, tuned_environment

ROOT = Path(__file__).resolve().parent.parent
GLIBC = allocator.on_glibc()


@pytest.mark.skipif(not GLIBC, reason="the allocator's settings are glibc's")
def test_the_environment_gets_the_settings_once_and_never_overrides_a_choice():
    tuned = tuned_environment({"PATH": "/bin"})
    assert tuned is not None and all(tuned[name] == value for name, value in SETTINGS.items()) and tuned["PATH"] == "/bin"
    assert tuned_environment(tuned) is None  # started with them: no second restart
    assert tuned_environment({"MALLOC_TRIM_THRESHOLD_": "0"}) is None  # the user's own choice stays
    assert tuned_environment({"MALLOC_ARENA_MAX": "2"}) is None and tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}) is None
    assert tuned_environment({OPT_OUT: "default"}) is None


def test_nothing_changes_off_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "on_glibc", lambda: False)
    assert tuned_environment({}) is None


def _environment_seen_by_a_plugin(tmp_path: Path, **extra: str) -> str:
    """Run `python -m cvstream.cli validate` with a plugin that writes the allocator variable it sees."""
    seen = tmp_path / "seen.txt"
    plugin = tmp_path / "plugin.py"
    plugin.write_text(f"import os\nopen({str(seen)!r}, 'w').write(os.environ.get('MALLOC_TRIM_THRESHOLD_', 'unset'))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in (OPT_OUT, "GLIBC_TUNABLES")}
    env.update(PYTHONPATH=str(ROOT), **extra)
    done = subprocess.run([sys.executable, "-m", "cvstream.cli", "validate", str(ROOT / "experiments" / "demo.yaml"), "--plugin", str(plugin)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return seen.read_text()


@pytest.mark.skipif(not GLIBC, reason="the allocator's settings are glibc's")
def test_the_command_line_runs_under_the_tuned_allocator_unless_told_not_to(tmp_path):
    assert _environment_seen_by_a_plugin(tmp_path) == SETTINGS["MALLOC_TRIM_THRESHOLD_"]
    assert _environment_seen_by_a_plugin(tmp_path, **{OPT_OUT: "default"}) == "unset"
