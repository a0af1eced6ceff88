"""Reading, overriding, validating and writing :class:`~qlora_kit.config.RunConfig`."""

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
from qlora_kit.errors import ConfigError
from qlora_kit.registry import import_plugins


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML or JSON config file into a dict, naming the file (and line) on failure."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([("", f"config file not found: {path}")], source=str(path))
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            [("", f"not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}")], str(path)
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([("", f"top level must be a mapping, got {type(data).__name__}")], str(path))
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key.path=value`` overrides applied (values parsed as YAML)."""
    result = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError([(item, "override must look like `section.key=value`")], "overrides")
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError([(key, f"{part!r} is not a section")], "overrides")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return result


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
    path_or_dict: str | Path | Mapping[str, Any] | RunConfig, overrides: Iterable[str] = ()
) -> RunConfig:
    """Load a :class:`RunConfig` from a YAML/JSON file, a dict or a RunConfig, applying dotted overrides.

    Example:
        >>> cfg = load_config({"train": {"epochs": 3}}, overrides=["train.optimizer.lr=1e-4"])
    """
    if isinstance(path_or_dict, RunConfig):
        data: Mapping[str, Any] = path_or_dict.model_dump(mode="json")
        source = "config"
    elif isinstance(path_or_dict, Mapping):
        data, source = path_or_dict, "config"
    else:
        data, source = read_config_file(path_or_dict), str(path_or_dict)
    overrides = list(overrides)
    if overrides:
        data = apply_overrides(data, overrides)
    return validate_config(data, source)


def config_to_yaml(cfg: RunConfig) -> str:
    """The fully resolved config as YAML (every default filled in)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


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
    out.mkdir(parents=True, exist_ok=True)
    path = out / "run_config.yaml"
    path.write_text(config_to_yaml(cfg), encoding="utf-8")
    (out / "versions.json").write_text(json.dumps(package_versions(), indent=2) + "\n", encoding="utf-8")
    return path
