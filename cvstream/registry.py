"""Name -> class registries, so that a name in a scenario file maps to exactly one class."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class Params(BaseModel):
    """Base for a component's scenario parameters: typed, frozen, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            cls.name = name  # type: ignore[attr-defined]
            self._entries[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> type[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; allowed: {', '.join(self.names())}"
