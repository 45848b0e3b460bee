"""Dependencies run one way, down: a module imports only modules of its own layer or of a layer below, never one
above, not even inside a function. Checked on the source (every import statement, and module paths given to
`import_module` or the scenario's `_registered`) and in a fresh interpreter (what importing a layer loads)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "cvstream"

# Bottom first. A name is a module or a package (all its modules); `cvstream` alone is the package's own __init__.
LAYERS = [
    ("cvstream.errors", "cvstream.registry", "cvstream.files", "cvstream.allocator"),
    ("cvstream.sessions",),
    ("cvstream.models",),
    ("cvstream.gallery",),
    ("cvstream.evaluation",),
    ("cvstream.simulator",),
    ("cvstream.timeline",),
    ("cvstream.reporting",),
    # Below the studies: they build their runs' scenarios from files and load plugin files in Ray workers.
    ("cvstream.scenario", "cvstream.plugins"),
    ("cvstream.studies",),
    ("cvstream.cli", "cvstream"),
]
BY_PATH = {"import_module", "_registered"}  # calls whose first argument, a string, names a module to import


def layer_of(module: str) -> int | None:
    """The layer of a module name (the longest name in LAYERS that is it or contains it), None if it is in none."""
    best, found = -1, None
    for rank, names in enumerate(LAYERS):
        for name in names:
            matches = module == name or (name != "cvstream" and module.startswith(name + "."))
            if matches and len(name) > best:
                best, found = len(name), rank
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, cvstream module) for everything a module's source imports, wherever the statement stands."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package up
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if is_module(candidate) else base))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in BY_PATH:
                found.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in found if name == "cvstream" or name.startswith("cvstream.")]


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        own = layer_of(module)
        if own is None:
            problems.append(f"{path.relative_to(REPO)}: {module} is in no layer; add it to LAYERS in tests/test_layers.py")
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, target in imported(tree, module, path.name == "__init__.py"):
            rank = layer_of(target)
            if rank is None or rank > own:
                where = "no layer" if rank is None else f"layer {rank} ({', '.join(LAYERS[rank])})"
                problems.append(f"{path.relative_to(REPO)}:{line}: {module} (layer {own}) imports {target}, in {where}")
    return problems


def test_no_module_imports_a_layer_above_its_own():
    problems = upward_imports()
    assert not problems, "imports that go up:\n" + "\n".join(problems)


def test_the_check_sees_imports_inside_functions_relative_ones_and_module_paths(tmp_path):
    source = """
import numpy
from cvstream.errors import UserError

def later():
    from cvstream import timeline
    from ..studies import compare
    importlib.import_module("cvstream.cli")
"""
    found = imported(ast.parse(source), "cvstream.gallery.index", is_package=False)
    assert found == [(3, "cvstream.errors"), (6, "cvstream.timeline"), (7, "cvstream.studies.compare"), (8, "cvstream.cli")]
    assert [layer_of(name) for _, name in found] == [0, 6, 9, 10]
    assert layer_of("cvstream.gallery.index") == 3 and layer_of("cvstream") == 10 and layer_of("cvstream.simulatorx") is None


# One fresh interpreter imports the layers bottom first, module by module, and after each looks in sys.modules for a
# module of a layer above the one being imported: the first module after which one appears is the one that loads it.
PROBE = """
import importlib, json, pkgutil, sys
layers = json.loads(sys.argv[1])
def layer_of(module):
    best, found = -1, None
    for rank, names in enumerate(layers):
        for name in names:
            if (module == name or (name != "cvstream" and module.startswith(name + "."))) and len(name) > best:
                best, found = len(name), rank
    return found
imported = []
for rank, names in enumerate(layers[:-1]):
    for name in names:
        module = importlib.import_module(name)
        modules = [name] + sorted(m.name for m in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."))
        for each in modules:
            importlib.import_module(each)
            imported.append(each)
            above = sorted(m for m in sys.modules if m.startswith("cvstream.") and (layer_of(m) or 0) > rank)
            if above:
                print(json.dumps({"imported": imported, "module": each, "layer": rank, "loaded": above}))
                sys.exit(0)
print(json.dumps({"imported": imported, "module": None}))
"""


def test_importing_a_layer_loads_no_module_of_a_layer_above():
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(LAYERS)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["module"] is None, f"importing {report['module']} (layer {report['layer']}) loads {', '.join(report['loaded'])}"
    assert "cvstream.gallery.index" in report["imported"] and "cvstream.studies.sweep" in report["imported"]
