"""Generate docs/config-reference.md from the config models (every field's docstring is its documentation).

python docs/gen_config_reference.py            # rewrite docs/config-reference.md
python docs/gen_config_reference.py --check    # exit 1 if the file is out of date (CI)
"""

from __future__ import annotations

import argparse
import inspect
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from qlora_kit.config import RunConfig, StrictModel
from qlora_kit.registry import Registry

OUTPUT = Path(__file__).resolve().parent / "config-reference.md"
HEADER = """# Configuration reference

Generated from `qlora_kit.config` and the component registries by `python docs/gen_config_reference.py`;
do not edit by hand. Every key can be set in YAML/JSON or overridden on the command line as
`section.key=value` (values parsed as YAML), e.g.
`qlora-kit train run.yaml train.optimizer.lr=1e-4 data.subset.n=500`. Unknown keys are errors (with a
"did you mean" hint).

Sections that choose a component (`quant`, `adapter`, `data.formatter`, `train.optimizer`,
`train.scheduler`, `train.loss`, `train.callbacks`, `export`) take a `kind` and that kind's options
side by side; each registered kind is listed below with its options. A missing `kind` means the
section's default kind; switching the kind on the command line (`export.kind=none`) drops the previous
kind's options. [Every kind](#every-kind-qlora-kit-schema---kinds), at the end of this page, is what
`qlora-kit schema --kinds` prints: each registry (formatters, quantization kinds, adapter methods, losses,
optimizers, schedules, exporters, callbacks) with its kinds, their one-line summaries and option names; the
command also lists the kinds your plugins register (`--plugin MODULE`, or the config's `plugins:`).
[docs/plugins.md](plugins.md) shows how to add one, and [docs/data-formats.md](data-formats.md) what each
formatter reads and trains on.
"""

SECTIONS = {
    "formatters": "data.formatter",
    "quantization": "quant",
    "adapters": "adapter",
    "losses": "train.loss",
    "optimizers": "train.optimizer",
    "schedulers": "train.scheduler",
    "exporters": "export",
    "callbacks": "train.callbacks",
}
"""The config section each registry's kinds are chosen in."""


def model_classes(annotation: Any) -> list[type[BaseModel]]:
    """The StrictModel classes inside an annotation (one for a plain section, several for a union)."""
    if inspect.isclass(annotation) and issubclass(annotation, StrictModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        for cls in model_classes(arg):
            if cls not in found:
                found.append(cls)
    return found


def component_registry(field: Any) -> tuple[Registry, str | None] | None:
    """The registry (and default kind) behind a component field, or None for a plain field.

    pydantic moves a field's own ``Annotated`` metadata to ``field.metadata``; a list's item type keeps it.
    """
    metadata = list(field.metadata)
    for arg in typing.get_args(field.annotation):
        metadata += getattr(arg, "__metadata__", ())
    for meta in metadata:
        if isinstance(getattr(meta, "registry", None), Registry):
            return meta.registry, meta.default_kind
    return None


def type_name(annotation: Any) -> str:
    """A short readable type: `int`, `"nf4" | "fp4"`, `list[str] | "all-linear"`, `float | None`."""
    if annotation is type(None):
        return "None"
    if inspect.isclass(annotation) and not typing.get_args(annotation):
        return annotation.__name__
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return str(annotation).replace("typing.", "")


def default_text(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            changed = value.model_dump(mode="json", exclude_defaults=True)
            kind = getattr(value, "kind", None)
            if kind is not None:
                return cell(f"`{kind}`" + (f" `{changed}`" if changed else ""))
            return f"`{changed}`" if changed else "defaults below"
        return cell(f"`{value!r}`")
    if field.default is PydanticUndefined:
        return "**required**"
    return cell(f"`{field.default!r}`")


def cell(text: str) -> str:
    """Table-cell text: one line, with `|` escaped so it does not split the cell."""
    return text.replace("\n", " ").replace("|", "\\|")


def section(prefix: str, cls: type[BaseModel], level: int, lines: list[str]) -> None:
    kind_field = cls.model_fields.get("kind")
    is_variant = kind_field is not None and typing.get_origin(kind_field.annotation) is typing.Literal
    kind = f" with `kind: {kind_field.default}`" if is_variant else ""
    title = f"`{prefix}`{kind}" if prefix else "Top level"
    lines += [f"{'#' * level} {title}", "", inspect.cleandoc(cls.__doc__ or ""), ""]
    rows, nested, components = [], [], []
    for name, field in cls.model_fields.items():
        component = component_registry(field)
        if component is not None:
            components.append((name, *component))
            kind = "list of components" if typing.get_origin(field.annotation) is list else "component"
            rows.append(f"| `{name}` | {kind} | {default_text(field)} | {cell(field.description or '')} |")
            continue
        classes = model_classes(field.annotation)
        if classes:
            nested.append((name, classes))
            rows.append(f"| `{name}` | section | {default_text(field)} | {cell(field.description or '')} |")
            continue
        kind_type = cell(f"`{type_name(field.annotation)}`")
        rows.append(f"| `{name}` | {kind_type} | {default_text(field)} | {cell(field.description or '')} |")
    lines += ["| key | type | default | description |", "|---|---|---|---|", *rows, ""]
    for name, classes in nested:
        for nested_cls in classes:
            section(f"{prefix}.{name}" if prefix else name, nested_cls, min(level + 1, 4), lines)
    for name, registry, default in components:
        path = f"{prefix}.{name}" if prefix else name
        for entry in registry.entries():
            if not entry.component.__module__.startswith("qlora_kit."):
                continue  # a plugin registered in this process (e.g. by a test): not a built-in
            marker = " (default)" if entry.name == default else ""
            kind_section(path, entry, marker, min(level + 1, 4), lines)


def kind_section(path: str, entry: Any, marker: str, level: int, lines: list[str]) -> None:
    """One registered kind of a component section: its docstring and its options."""
    doc = (inspect.getdoc(entry.component) or "").split("\nArgs:", 1)[0].strip()
    lines += [f"{'#' * level} `{path}` with `kind: {entry.name}`{marker}", "", doc, ""]
    rows = [
        f"| `{name}` | {cell(f'`{type_name(field.annotation)}`')} | {default_text(field)} | "
        f"{cell(field.description or '')} |"
        for name, field in entry.config.model_fields.items()
        if name != "kind"
    ]
    if rows:
        lines += ["| key | type | default | description |", "|---|---|---|---|", *rows, ""]


def every_kind(lines: list[str]) -> None:
    """The built-in kinds of every registry, as `qlora-kit schema --kinds` lists them."""
    from qlora_kit.registry import REGISTRIES

    lines += ["## Every kind (`qlora-kit schema --kinds`)", "",
              "The built-in kinds of every registry; `qlora-kit schema --kinds` prints the same list, plus the "
              "kinds of the plugins it is given.", ""]  # fmt: skip
    for name, registry in REGISTRIES.items():
        where = f" (`{SECTIONS[name]}`)" if name in SECTIONS else ""
        lines += [f"### {name}{where}", "", "| kind | what it is | options |", "|---|---|---|"]
        for entry in registry.entries():
            if not entry.component.__module__.startswith("qlora_kit."):
                continue  # a plugin registered in this process (e.g. by a test): not a built-in
            options = ", ".join(f"`{f}`" for f in entry.config.model_fields if f != "kind")
            lines.append(f"| `{entry.name}` | {cell(entry.summary)} | {options} |")
        lines.append("")


def render() -> str:
    lines = [HEADER]
    section("", RunConfig, 2, lines)
    every_kind(lines)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is out of date: run python docs/gen_config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
