"""Layers only look down: importing any module of sessions, gallery or models imports neither the scenario nor the simulator."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

# One fresh interpreter per package imports its modules one by one and, after each, looks in
# sys.modules for the layers above: the first module after which one appears is the one that imports it.
PROBE = """
import importlib, json, pkgutil, sys
package = sys.argv[1]
names = [package] + sorted(m.name for m in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."))
found = {}
for name in names:
    importlib.import_module(name)
    above = sorted(m for m in sys.modules if m == "cvstream.scenario" or m == "cvstream.simulator" or m.startswith("cvstream.simulator."))
    if above:
        found = {"module": name, "imported": above}
        break
print(json.dumps({"modules": names, "found": found}))
"""


@pytest.mark.parametrize("package", ["cvstream.sessions", "cvstream.gallery", "cvstream.models"])
def test_a_lower_package_imports_neither_the_scenario_nor_the_simulator(package):
    done = subprocess.run([sys.executable, "-c", PROBE, package], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report["modules"]) > 1
    assert not report["found"], f"importing {report['found']['module']} imports {', '.join(report['found']['imported'])}"
