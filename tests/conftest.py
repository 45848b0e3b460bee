"""Shared fixtures: a tiny synthetic scenario, the real data root, an isolated cache."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


KILLED_MID_SESSION = """
import os, signal, sys
from cvstream.scenario import Scenario
from cvstream.simulator import Hook, Simulator

class KillMidSession(Hook):
    def on_train_step(self, sim, step, total, terms):
        if sim.generation == {deployed} and step == 2:  # the session after that generation's, in the middle of training
            os.kill(os.getpid(), signal.SIGKILL)

Simulator(Scenario.from_dict({scenario!r}), out_dir=sys.argv[1], hooks=[KillMidSession()]).run()
"""


def killed_mid_session(scenario: dict, *, deployed: int) -> str:
    """A script (for `run_until_killed`) that runs `scenario` into argv[1] and dies by SIGKILL in the middle of the
    training of the session after generation `deployed`'s."""
    return KILLED_MID_SESSION.format(scenario=scenario, deployed=deployed)


def run_until_killed(script: str, *args: str) -> None:
    """Run `script` in a fresh Python that imports this checkout; it must die by SIGKILL (a crash mid-run)."""
    done = subprocess.run([sys.executable, "-c", script, *args], env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]

TINY = {
    "name": "tiny",
    "seed": 3,
    "device": "cpu",
    "dataset": {"name": "synthetic", "classes": 12, "samples_per_class": 20, "image_size": 16, "channels": 3},
    "stream": {"setup": "disjoint", "sessions": 3, "initial_classes": 4, "classes_per_session": 4, "query_fraction": 0.25},
    "model": {"backbone": "convnet", "embedding_dim": 16, "width": 4},
    # float32 everywhere: a CPU with native bfloat16 would otherwise train under autocast and change the numbers
    "training": {"epochs": 1, "batch_size": 16, "lr": 0.03, "eval_batch_size": 64, "amp": False},
    "method": {"name": "cvs"},
    "replay": {"size": 24, "selection": "herding"},
}


# Slow embedding on purpose (items per second per accelerator): a backfill of the tiny gallery spans hours.
GIVEN_THROUGHPUT = {"train": 50.0, "embed": 0.05}


def tiny_timeline(**keys) -> dict:
    """A `timeline` section for the tiny scenario: sessions every 10 hours, slow given throughput, keys replaced."""
    base = {"session_interval_hours": 10, "eval_every_hours": 2, "throughput": GIVEN_THROUGHPUT, "chunk_items": 7,
            "accelerators": {"train": 2, "backfill": 3, "serve": 1}}
    return {**base, **keys}


def tiny_dict(**sections) -> dict:
    """The tiny scenario as a dict; keyword arguments replace or update whole sections."""
    data = copy.deepcopy(TINY)
    for key, value in sections.items():
        current = data.get(key)
        same_component = isinstance(current, dict) and all(
            value.get(k, current.get(k)) == current.get(k) for k in ("name", "setup") if isinstance(value, dict)
        )
        if isinstance(value, dict) and isinstance(current, dict) and same_component:
            current.update(value)
        else:
            data[key] = value
    return data


def write_scenario(tmp_path: Path, data, name: str = "s.yaml") -> Path:
    """A scenario file in tmp_path: a mapping dumped as YAML, or text written as it is."""
    import yaml

    path = Path(tmp_path) / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def tiny_scenario(**sections):
    from cvstream.scenario import Scenario

    return Scenario.from_dict(tiny_dict(**sections), source="tiny")


def real_data_root() -> Path | None:
    env = os.environ.get("CVSTREAM_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Derived files (decoded data sets) go to one cache per test session, never to the user's."""
    if "CVSTREAM_CACHE" not in os.environ:
        os.environ["CVSTREAM_CACHE"] = str(tmp_path_factory.mktemp("cvstream-cache"))
    yield


@pytest.fixture
def data_root() -> Path:
    root = real_data_root()
    if root is None:
        pytest.skip("no real data root: set CVSTREAM_DATA or provide ../shared/data")
    return root


@pytest.fixture
def plugin_file(tmp_path):
    """`plugin_file(source, name="my_plugin.py") -> path`: a plugin file in tmp_path (source dedented).

    Whatever plugins register during the test is unregistered after it, and the modules they were
    imported as are forgotten, so that the next test can load a plugin of the same names.
    """
    import sys
    import textwrap

    from cvstream.plugins import every_registry

    held = {registry: registry.snapshot() for registry in every_registry()}
    modules = set(sys.modules)

    def write(source: str, name: str = "my_plugin.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    yield write
    for registry, entries in held.items():
        registry.restore(entries)
    for name in set(sys.modules) - modules:
        where = getattr(sys.modules[name], "__file__", None) or ""
        if name.startswith("cvstream_plugin_") or where.startswith(str(tmp_path)):
            del sys.modules[name]
