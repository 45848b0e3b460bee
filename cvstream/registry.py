"""Name -> component registries, so that a name in a scenario file maps to exactly one class or function.

Every axis a user extends has one: data sets, stream setups, methods, backbones, backfill
policies and orders, replay selections, gallery index types and metrics. A component joins
its registry with `@REGISTRY.register("name")`, in cvstream or in a plugin file
(`cvstream.plugins`); validation and the command line read the registry, never a list.
Every registry made is in `Registry.every()`, which the plugin loader rolls back when a plugin fails.
"""

from __future__ import annotations

import difflib
import weakref
from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class Params(BaseModel):
    """Base for a component's scenario parameters: typed, frozen, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DuplicateName(ValueError):
    """A second component registered under a name already taken."""


class Registry(Generic[T]):
    """Components of one kind by name. `attributes` are what each entry declares besides its name, with their
    defaults: `register(name, **attributes)` sets them on the entry (an unknown one is a TypeError)."""

    _made: weakref.WeakSet[Registry] = weakref.WeakSet()  # every registry alive, for `every()`

    def __init__(self, kind: str, *, attributes: dict[str, Any] | None = None):
        self.kind = kind
        self.attributes = dict(attributes or {})
        self._entries: dict[str, T] = {}
        Registry._made.add(self)

    @classmethod
    def every(cls) -> list[Registry]:
        """Every registry made so far (in the modules imported so far), by kind."""
        return sorted(cls._made, key=lambda registry: registry.kind)

    def register(self, name: str, **attributes: Any) -> Callable[[T], T]:
        unknown = sorted(set(attributes) - set(self.attributes))
        if unknown:
            raise TypeError(f"{self.kind} {name!r}: unknown attribute {', '.join(unknown)}; a {self.kind} declares "
                            f"{', '.join(sorted(self.attributes)) or 'none'}")

        def decorate(entry: T) -> T:
            if name in self._entries:
                raise DuplicateName(f"{self.kind} {name!r} registered twice")
            entry.name = name  # type: ignore[attr-defined]
            for key, value in {**self.attributes, **attributes}.items():
                setattr(entry, key, value)
            self._entries[name] = entry
            return entry

        return decorate

    def snapshot(self) -> dict[str, T]:
        """The entries as they are now, for `restore`: a plugin that fails half-way leaves nothing behind."""
        return dict(self._entries)

    def restore(self, entries: dict[str, T]) -> None:
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; allowed: {', '.join(self.names())}"
