"""One mechanism for every open set of components: formatters, quantization kinds, adapter methods,
losses, optimizers, schedulers, exporters and callbacks.

A component is a class registered under a ``kind`` name. Its settings are its nested ``Options`` model
(optional); the registry derives from it the component's config model, ``<Class>.Config``: the options
plus ``kind``, strict (an unknown key is an error with a "did you mean"), frozen, documented. A config
section such as ``quant:`` or ``train.optimizer:`` is validated by looking up its ``kind`` here, and
``section.build(...)`` constructs the component as ``Class(config, ...)``. Built-ins register exactly
like plugins: a user's module registers its classes and is imported by name through
``plugins: [my_module]`` before the config is validated::

    from qlora_kit.registry import exporters

    @exporters.register("copy_checkpoints")
    class CopyCheckpoints:
        class Options(StrictModel):
            target: str
            \"\"\"Where to copy the final checkpoint.\"\"\"

        def __init__(self, config): ...
        def export(self, model, tokenizer, output_dir, run_cfg, **kwargs): ...
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, PlainValidator, SerializeAsAny

from qlora_kit.errors import ConfigError
from qlora_kit.strict import StrictModel


@dataclass(frozen=True)
class Entry:
    """A registered component and the config model derived from its ``Options``."""

    name: str
    component: type
    config: type[StrictModel]

    @property
    def summary(self) -> str:
        """The first paragraph of the component's docstring, on one line (a sentence may wrap)."""
        return " ".join((inspect.getdoc(self.component) or "").split("\n\n", 1)[0].split())


class Registry:
    """Maps ``kind`` names to component classes of one sort.

    Args:
        what: What the components are, in messages (``"quantization kind"``).
        builtins: The module that registers the built-in kinds, imported on first lookup (by name, so
            that this module imports none of the components).
    """

    def __init__(self, what: str, builtins: str):
        self.what = what
        self._builtins = builtins
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    # ------------------------------------------------------------------------------ registering

    def register(self, name: str, *, aliases: Iterable[str] = ()) -> Callable[[type], type]:
        """Class decorator registering a component as ``name`` (and optional older ``aliases``).

        Registering the same class again (a re-run notebook cell defines it anew) replaces the entry;
        another class under a taken name is an error.
        """

        def decorate(cls: type) -> type:
            existing = self._entries.get(name)
            if existing is not None and not _same_definition(existing.component, cls):
                raise ValueError(
                    f"{self.what} {name!r} is already registered by {existing.component.__module__}."
                    f"{existing.component.__qualname__}"
                )
            config = _derive_config(name, cls)
            cls.Config = config
            self._entries[name] = Entry(name, cls, config)
            for alias in aliases:
                self._aliases[alias] = name
            return cls

        return decorate

    # -------------------------------------------------------------------------------- looking up

    def names(self) -> list[str]:
        """Registered kind names, sorted."""
        self._load_builtins()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        """Every registered entry, sorted by name."""
        return [self._entries[n] for n in self.names()]

    def entry(self, name: str) -> Entry:
        """The entry of ``name`` (or of the kind it is an alias of).

        Raises:
            ValueError: an unknown kind, listing the known ones.
        """
        self._load_builtins()
        name = self._aliases.get(name, name)
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names())
            raise ValueError(
                f"unknown {self.what} {name!r}; known: {known} (a plugin module can register more)"
            ) from None

    def get(self, name: str) -> type:
        """The component class registered as ``name``."""
        return self.entry(name).component

    def make(self, kind: str, **options: Any) -> StrictModel:
        """A validated config of ``kind`` with ``options`` (e.g. ``quantization.make("none")``)."""
        return self.validate({"kind": kind, **options})

    # -------------------------------------------------------------------------------- validating

    def validate(self, value: Any, default_kind: str | None = None) -> StrictModel:
        """Validate a config section: a mapping with ``kind`` (``default_kind`` when missing), a bare kind
        name, or an already validated config. Errors keep their paths inside the section."""
        if isinstance(value, StrictModel) and isinstance(getattr(value, "kind", None), str):
            if isinstance(value, self.entry(value.kind).config):
                return value
            value = value.model_dump()
        if isinstance(value, str):
            value = {"kind": value}
        if not isinstance(value, Mapping):
            raise ValueError(
                f"expected a mapping with `kind` (a {self.what}: {', '.join(self.names())}) or a kind name, "
                f"got {type(value).__name__}"
            )
        data = dict(value)
        kind = data.pop("kind", default_kind)
        if kind is None:
            raise ValueError(f"`kind` is required; known {self.what}s: {', '.join(self.names())}")
        entry = self.entry(str(kind))
        data = _flatten_legacy_options(data, entry)
        return entry.config.model_validate({"kind": entry.name, **data})

    def field_type(self, default_kind: str | None = None) -> Any:
        """The annotation of a config field holding one of these components."""
        return Annotated[
            SerializeAsAny[StrictModel],
            PlainValidator(partial(self.validate, default_kind=default_kind)),
            _ComponentSchema(self, default_kind),
        ]

    def default(self, kind: str, **options: Any) -> Any:
        """A field default: ``quant: QuantSpec = quantization.default("bnb_4bit")``."""
        return Field(default_factory=lambda: self.make(kind, **options))

    def _load_builtins(self) -> None:
        if self._builtins:
            module, self._builtins = self._builtins, ""
            importlib.import_module(module)


class _ComponentSchema:
    """JSON schema of a component field: one alternative per registered kind, read when generated, so
    plugin kinds appear too."""

    def __init__(self, registry: Registry, default_kind: str | None):
        self.registry = registry
        self.default_kind = default_kind

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        variants = []
        for entry in self.registry.entries():
            schema = entry.config.model_json_schema()
            schema["title"] = entry.name
            schema["description"] = inspect.getdoc(entry.component) or ""
            variants.append(schema)
        default = f" Without `kind`: {self.default_kind}." if self.default_kind else ""
        return {"description": f"A {self.registry.what}, chosen by `kind`.{default}", "anyOf": variants}


def _same_definition(a: type, b: type) -> bool:
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _derive_config(name: str, cls: type) -> type[StrictModel]:
    """``cls.Options`` made strict and frozen, plus a ``kind`` field and ``build()``.

    A plugin's options are validated as strictly as a built-in's whatever its author wrote: the derived
    model forbids unknown keys even when ``Options`` does not.
    """
    options = getattr(cls, "Options", None) or StrictModel
    bases = (options,) if issubclass(options, StrictModel) else (StrictModel, options)

    def build(self: Any, *args: Any, **kwargs: Any) -> Any:
        """Construct the component from this config (``Class(config, *args, **kwargs)``)."""
        return cls(self, *args, **kwargs)

    namespace = {
        "__module__": cls.__module__,
        "__qualname__": f"{cls.__qualname__}.Config",
        "__doc__": inspect.getdoc(cls) or inspect.getdoc(options),
        "__annotations__": {"kind": Literal[name], "component": ClassVar[type]},
        "kind": Field(default=name, description=f"`{name}`"),
        "component": cls,
        # the derived class has no source to read attribute docstrings from; Options' fields keep theirs
        "model_config": ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=False),
        "build": build,
    }
    return type(f"{cls.__name__}Config", bases, namespace)


def _flatten_legacy_options(data: dict[str, Any], entry: Entry) -> dict[str, Any]:
    """Accept the 0.1 form ``{kind: x, options: {...}}`` of a formatter section (flat since 0.2)."""
    options = data.get("options")
    if isinstance(options, Mapping) and "options" not in entry.config.model_fields:
        warnings.warn(
            f"{entry.name}: nested `options:` is deprecated; write the options beside `kind`",
            DeprecationWarning,
            stacklevel=4,
        )
        data = {k: v for k, v in data.items() if k != "options"}
        data = {**options, **data}
    return data


formatters = Registry("formatter", "qlora_kit.formatting")
quantization = Registry("quantization kind", "qlora_kit.model.quant")
adapters = Registry("adapter method", "qlora_kit.model.adapters")
losses = Registry("loss", "qlora_kit.training.loss_kinds")
optimizers = Registry("optimizer", "qlora_kit.training.optim")
schedulers = Registry("scheduler", "qlora_kit.training.schedule")
exporters = Registry("exporter", "qlora_kit.export")
callbacks = Registry("callback", "qlora_kit.training.callback_kinds")

REGISTRIES: dict[str, Registry] = {
    "formatters": formatters,
    "quantization": quantization,
    "adapters": adapters,
    "losses": losses,
    "optimizers": optimizers,
    "schedulers": schedulers,
    "exporters": exporters,
    "callbacks": callbacks,
}
"""Every registry, by the name ``qlora-kit schema --kinds`` shows."""


def import_plugins(modules: Iterable[str]) -> None:
    """Import each plugin module so it can register components. A failing import raises."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import failure is the user's to see, with its cause
            raise ConfigError([("plugins", f"cannot import plugin {module!r}: {exc}")]) from exc
