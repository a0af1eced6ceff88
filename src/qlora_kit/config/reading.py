"""Reading config files: YAML or JSON, and files that build on others through ``base:``.

A config file may name another as its base (a path relative to the file itself); chains are allowed::

    # experiment.yaml
    base: ../recipes/seed.yaml
    train: {epochs: 1}
    export: {kind: merged, dtype: float16}

The base is read first (recursively), then the file's own keys are merged over it: mappings merge key by
key, lists and values replace. A component section (one with a `kind`) whose kind differs from the
base's replaces the base's section instead of merging into it, since the base's options belong to
another kind (the rule of ``export.kind=...`` command-line overrides too). Command-line overrides apply
on top of the merged result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from qlora_kit.config import RunConfig
from qlora_kit.errors import ConfigError

BASE_KEY = "base"
"""The key of a config file that names the file it builds on."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML or JSON config file into a dict, naming the file (and line) on failure."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([("", f"config file not found: {path}")], source=str(path))
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([("", f"not valid UTF-8 at line {line} (byte {raw[exc.start:exc.start + 1]!r}); "
                           "save the file as UTF-8")], str(path)) from None  # fmt: skip
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            [("", f"not valid {path.suffix.lstrip('.') or 'YAML'}: {one_line(exc)}")], str(path)
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([("", f"top level must be a mapping, got {type(data).__name__}")], str(path))
    return data


def read_config_chain(path: str | Path) -> dict[str, Any]:
    """The config of the file at ``path`` with its ``base:`` chain resolved and merged (see the module).

    Raises:
        ConfigError: a file is missing or invalid, ``base`` is not a path, or the chain is a cycle
            (every file of the cycle is named).
    """
    return _resolve(Path(path), [])


def _resolve(path: Path, chain: list[Path]) -> dict[str, Any]:
    key = path.resolve()
    if key in chain:
        cycle = " -> ".join(str(p) for p in [*chain[chain.index(key) :], key])
        raise ConfigError([(BASE_KEY, f"the bases form a cycle: {cycle}")], str(path))
    data = read_config_file(path)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError([(BASE_KEY, f"must be the path of another config file, got {base!r}")], str(path))
    base_path = path.parent / Path(base).expanduser()  # an absolute `base` stays absolute
    if not base_path.is_file():
        raise ConfigError(
            [(BASE_KEY, f"{base_path}: file not found (a relative base is relative to {path})")], str(path)
        )
    return merge_config(_resolve(base_path, [*chain, key]), data)


def merge_config(base: dict[str, Any], top: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """``top`` merged over ``base``: mappings key by key, everything else replaced; a component section
    of another kind than the base's replaces the base's section (its options belong to that kind)."""
    merged = dict(base)
    components = component_defaults(list(path))
    for key, value in top.items():
        below = merged.get(key)
        if key in components:  # `train.loss: chunked` is a bare kind name
            below = {"kind": below} if isinstance(below, str) else below
            value = {"kind": value} if isinstance(value, str) and isinstance(below, dict) else value
        if isinstance(value, dict) and isinstance(below, dict):
            kind = value.get("kind")
            other_kind = key in components and kind is not None and kind != current_kind(below, [*path, key])
            merged[key] = value if other_kind else merge_config(below, value, (*path, key))
        else:
            merged[key] = value
    return merged


def one_line(exc: Exception) -> str:
    """A parser error as one line with its line and column (YAML's own message spans several)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    return " ".join(str(exc).split())


def current_kind(node: dict[str, Any], path: list[str]) -> str | None:
    """The kind a section has now: its `kind`, or its field's default kind when it names none."""
    if "kind" in node:
        return node["kind"]
    return component_defaults(path[:-1]).get(path[-1]) if path else None


def component_defaults(path: list[str]) -> dict[str, str | None]:
    """For the config model at ``path``: its component fields and their default kinds."""
    model: Any = RunConfig
    for part in path:
        field = getattr(model, "model_fields", {}).get(part)
        model = field.annotation if field is not None else None
    fields = getattr(model, "model_fields", {}) if isinstance(model, type) else {}
    defaults: dict[str, str | None] = {}
    for name, field in fields.items():
        if field.default_factory is not None:
            value = field.default_factory()
            if isinstance(getattr(value, "kind", None), str):
                defaults[name] = value.kind
    return defaults
