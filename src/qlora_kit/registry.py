"""A small typed registry for open sets of components (prompt formatters), plus plugin import.

Built-ins register themselves on import of their package; a user's module registers its own classes
and is imported by name through ``plugins: [my_module]`` before the config is validated.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from qlora_kit.errors import ConfigError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Maps names to classes. A class may define ``Options`` (a pydantic model) for its settings."""

    def __init__(self, what: str, builtins_module: str | None = None):
        self.what = what
        self._builtins_module = builtins_module
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@formatters.register("dolly")``."""

        def decorate(cls: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not cls:
                raise ValueError(f"{self.what} {name!r} is already registered by {existing.__qualname__}")
            self._items[name] = cls
            return cls

        return decorate

    def _load_builtins(self) -> None:
        if self._builtins_module:
            importlib.import_module(self._builtins_module)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load_builtins()
        return sorted(self._items)

    def get(self, name: str) -> T:
        """The class registered as ``name``; unknown names list the known ones."""
        self._load_builtins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names())
            raise ValueError(
                f"unknown {self.what} {name!r}; known: {known} (a plugin module can register more)"
            ) from None

    def validate_options(self, name: str, options: dict[str, Any]) -> BaseModel | None:
        """Validate ``options`` against the class's ``Options`` model (None if it has none)."""
        cls = self.get(name)
        options_model: type[BaseModel] | None = getattr(cls, "Options", None)
        if options_model is None:
            if options:
                raise ValueError(f"{self.what} {name!r} takes no options, got {sorted(options)}")
            return None
        try:
            return options_model.model_validate(options)
        except ValidationError as exc:
            details = "; ".join(f"options.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{self.what} {name!r}: {details}") from None


formatters: Registry[type] = Registry("formatter", builtins_module="qlora_kit.formatting")


def import_plugins(modules: Iterable[str]) -> None:
    """Import each plugin module so it can register components. A failing import raises."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import failure is the user's to see, with its cause
            raise ConfigError([("plugins", f"cannot import plugin {module!r}: {exc}")]) from exc
