"""Plugins: a user's Python file, or an installed package, that registers components without editing cvstream.

A plugin registers with the registries' own decorators (`@BACKFILL_ORDERS.register("mine")`,
see `registries()`). It is named on the command line (`cvstream run --plugin FILE ...`), loaded
from Python (`load_plugin(FILE)`), or installed with an entry point in the group
`cvstream.plugins` that names a module (`mine = "my_package.cvstream_components"`), imported
once at the start of every command. A scenario file can name a registered component, never a
plugin: a scenario is data, and reading one never runs code.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import pkgutil
import re
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from cvstream.errors import UserError
from cvstream.registry import DuplicateName, Registry

ENTRY_POINT_GROUP = "cvstream.plugins"


class PluginError(UserError):
    """A plugin that cannot be loaded: missing, failing on import, or registering a name already taken."""


# The packages where components live. Every module in them is imported before a plugin runs, so that every registry
# exists (with cvstream's own entries) when it is snapshot; the registries themselves are `Registry.every()`.
COMPONENT_PACKAGES = ("cvstream.sessions", "cvstream.models", "cvstream.gallery", "cvstream.evaluation", "cvstream.simulator")


def registries() -> dict[str, Registry]:
    """Every registry a plugin can add to, by the kind of component, with cvstream's own entries in."""
    return {registry.kind: registry for registry in every_registry()}


def every_registry() -> list[Registry]:
    """Every registry made, after importing every module where components live."""
    for package in COMPONENT_PACKAGES:
        for found in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
            importlib.import_module(found.name)
    return Registry.every()


def load_plugin(path: str | Path) -> ModuleType:
    """Import a plugin file (once per process: a second call returns the same module); a failure is a PluginError."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise PluginError(f"plugin {path}: no such file")
    if path.suffix != ".py":
        raise PluginError(f"plugin {path}: not a Python file (.py)")
    name = module_name(path)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    with _all_or_nothing(f"plugin {path}", path=path):
        sys.modules[name] = module  # while it runs, as an import would (dataclasses and pickle look it up)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
    return module


def load_entry_points() -> list[ModuleType]:
    """Import the module of every installed entry point in the group `cvstream.plugins`."""
    modules = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(entry, "dist", None), "name", None)
        where = f"plugin {entry.name} (entry point {entry.value!r} of {dist or 'an installed package'}, group {ENTRY_POINT_GROUP})"
        with _all_or_nothing(where):
            modules.append(importlib.import_module(entry.module))
    return modules


def load_plugins(paths: list[str | Path] | tuple[str | Path, ...] = (), *, entry_points: bool = True) -> list[ModuleType]:
    """The installed plugins (entry points), then the plugin files, in order."""
    modules = load_entry_points() if entry_points else []
    return modules + [load_plugin(path) for path in paths]


def module_name(path: Path) -> str:
    """The module a plugin file is imported as: its stem, made an identifier, and a hash of its full path."""
    stem = re.sub(r"\W", "_", path.stem)
    return f"cvstream_plugin_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"


@contextmanager
def _all_or_nothing(where: str, *, path: Path | None = None):
    """Run a plugin's import: if it fails, its registrations are undone and the failure is a PluginError."""
    held = {registry: registry.snapshot() for registry in every_registry()}
    try:
        yield
    except BaseException as exc:
        for registry, entries in held.items():
            registry.restore(entries)
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not the plugin's error to report
            raise
        if isinstance(exc, (DuplicateName, UserError)):
            raise PluginError(f"{where}: {exc}") from None
        raise PluginError(f"{where} cannot be imported: {type(exc).__name__}: {exc}{_line(exc, path)}") from None


def _line(exc: BaseException, path: Path | None) -> str:
    """' (line N)' of the plugin file where the exception was raised."""
    if path is None or isinstance(exc, SyntaxError):  # a syntax error's message names its line already
        return ""
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if Path(frame.filename) == path]
    return f" (line {lines[-1]})" if lines else ""
