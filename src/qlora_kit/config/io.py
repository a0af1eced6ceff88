"""Reading, overriding, validating and writing :class:`~qlora_kit.config.RunConfig` (files are parsed, and
their ``base:`` chains resolved, in :mod:`qlora_kit.config.reading`)."""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from qlora_kit.config import RunConfig
from qlora_kit.config.reading import (
    component_defaults,
    current_kind,
    one_line,
    read_config_chain,
    read_config_file,
)
from qlora_kit.errors import ConfigError
from qlora_kit.files import atomic_write_json, atomic_write_text
from qlora_kit.registry import import_plugins

RUN_CONFIG_FILE = "run_config.yaml"
"""The fully resolved config a run (and each of its exports) is saved with."""


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key.path=value`` overrides applied (values parsed as YAML).

    Overrides of a component's ``kind`` are applied first, and switching a section to another kind
    drops the previous kind's options (``export.kind=none`` on a merged export drops its `dtype`);
    the other overrides then apply on top, in order.
    """
    result = json.loads(json.dumps(data))  # deep copy of plain data
    parsed = [_parse_override(item) for item in overrides]
    for parts, value in sorted(parsed, key=lambda pv: pv[0][-1] != "kind"):  # stable: kinds first
        node = _section(result, parts)
        if parts[-1] == "kind" and isinstance(value, str) and value != current_kind(node, parts[:-1]):
            node.clear()
        node[parts[-1]] = value
    return result


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError([(item, "override must look like `section.key=value`")], "overrides")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(
            [(key.strip(), f"value {raw!r} is not valid YAML ({one_line(exc)})")], "overrides"
        ) from None
    return key.strip().split("."), value


def _section(root: dict[str, Any], parts: list[str]) -> dict[str, Any]:
    """The mapping that holds ``parts[-1]``, created as needed."""
    node = root
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and part in component_defaults(parts[: parts.index(part)]):
            child = node[part] = {"kind": child}  # `train.loss: chunked` written as a bare kind name
        if not isinstance(child, dict):
            raise ConfigError([(".".join(parts), f"{part!r} is not a section")], "overrides")
        node = child
    return node


def _child(node: Any, key: Any) -> Any:
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and isinstance(key, int) and key < len(node):
        return node[key]
    return None


def _dotted(loc: tuple[Any, ...], data: Any, missing: bool) -> str:
    """pydantic's error location as `a.b.c`, without the union tags and validator names it inserts."""
    parts: list[str] = []
    node = data
    for i, part in enumerate(loc):
        names_missing_key = missing and i == len(loc) - 1
        if (
            isinstance(part, str)
            and not names_missing_key
            and (part.startswith("function-") or (isinstance(node, dict) and part not in node))
        ):
            continue  # a discriminated-union tag or a validator wrapper, not a key of the input
        parts.append(str(part))
        node = _child(node, part)
    return ".".join(parts)


def validate_config(data: Mapping[str, Any], source: str = "config") -> RunConfig:
    """Import the config's plugins, then validate it; every error is reported with its dotted path."""
    plugins = data.get("plugins") or []
    if isinstance(plugins, list):
        import_plugins(plugins)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        errors = [
            (_dotted(e["loc"], data, e["type"] == "missing"), e["msg"].removeprefix("Value error, "))
            for e in exc.errors()
        ]
        raise ConfigError(errors, source) from None


def load_config(
    path_or_dict: str | Path | Mapping[str, Any] | RunConfig,
    overrides: Iterable[str] = (),
    source: str = "config",
) -> RunConfig:
    """Load a :class:`RunConfig` from a YAML/JSON file, a dict or a RunConfig, applying dotted overrides.

    A file's ``base:`` chain is resolved first (:mod:`qlora_kit.config.reading`); the overrides apply on
    top of the merged config.

    Example:
        >>> cfg = load_config({"train": {"epochs": 3}}, overrides=["train.optimizer.lr=1e-4"])
    """
    if isinstance(path_or_dict, RunConfig):
        data: Mapping[str, Any] = path_or_dict.model_dump(mode="json")
        source = "config"
    elif isinstance(path_or_dict, Mapping):
        data = path_or_dict
    else:
        data, source = read_config_chain(path_or_dict), str(path_or_dict)
    overrides = list(overrides)
    if overrides:
        data = apply_overrides(data, overrides)
    return validate_config(data, source)


def load_run_config(
    path: str | Path, overrides: Iterable[str] = (), *, allow_code: bool = False
) -> RunConfig:
    """The ``run_config.yaml`` of a run or export directory, for `generate`, `export` and `verify`.

    A run directory may come from anyone: its config must not run code unless the user says so. So
    ``plugins`` (modules to import) and ``model.trust_remote_code`` are refused unless ``allow_code``
    (``--trust-code`` on the command line), before anything is imported.

    Raises:
        ConfigError: the file is missing or invalid, or asks to run code without ``allow_code``.
    """
    data = read_config_file(path)
    if not allow_code:
        asks = []
        if data.get("plugins"):
            asks.append(f"imports the plugin module(s) {data['plugins']}")
        if isinstance(data.get("model"), dict) and data["model"].get("trust_remote_code"):
            asks.append("runs the model repository's own code (model.trust_remote_code: true)")
        if asks:
            raise ConfigError(
                [
                    (
                        "",
                        f"this run's config {' and '.join(asks)}; code from a run directory runs only if you "
                        "trust it: pass --trust-code (Python: allow_code=True)",
                    )
                ],  # fmt: skip
                str(path),
            )
    return load_config(data, overrides, source=str(path))


def config_to_yaml(cfg: RunConfig) -> str:
    """The fully resolved config as YAML (every default filled in; in a section, `kind` first)."""
    return yaml.safe_dump(_kind_first(cfg.model_dump(mode="json")), sort_keys=False, allow_unicode=True)


def _kind_first(node: Any) -> Any:
    if isinstance(node, dict):
        ordered = {"kind": node["kind"]} if "kind" in node else {}
        return ordered | {k: _kind_first(v) for k, v in node.items() if k != "kind"}
    if isinstance(node, list):
        return [_kind_first(v) for v in node]
    return node


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a run depends on."""
    versions = {"python": platform.python_version()}
    for name in (
        "qlora_kit",
        "torch",
        "transformers",
        "peft",
        "bitsandbytes",
        "datasets",
        "accelerate",
        "pydantic",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_run_config(cfg: RunConfig, output_dir: str | Path) -> Path:
    """Write ``run_config.yaml`` and ``versions.json`` so the run can be repeated from its folder."""
    out = Path(output_dir)
    path = atomic_write_text(out / RUN_CONFIG_FILE, config_to_yaml(cfg))
    atomic_write_json(out / "versions.json", package_versions())
    return path
