"""The base of every config section and every component's options: strict, frozen, self-documenting.

A leaf module (it imports nothing of the library), so that both :mod:`qlora_kit.config` and
:mod:`qlora_kit.registry` can build on it without importing each other.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

DType = Literal["bfloat16", "float16", "float32"]
ComputeDType = Literal["auto", "bfloat16", "float16", "float32"]
"""`auto`: chosen for the device (:mod:`qlora_kit.model.compute_dtype`)."""


class StrictModel(BaseModel):
    """Base of every config section and component options: unknown keys are errors (with a "did you
    mean" hint), instances are immutable, and each field's attribute docstring is its documentation."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        # pydantic's own extra_forbidden error gives no hint; this one suggests the closest field.
        if not isinstance(data, dict):
            return data
        known = set(cls.model_fields)
        unknown = [k for k in data if k not in known]
        if unknown:
            hints = []
            for key in unknown:
                # a key that exists one level down is a surer hint than a similar spelling here
                close = _one_level_down(cls, str(key), data)
                close = close or difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
                hints.append(
                    f"{key!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else "")
                )
            raise ValueError(f"unknown key(s) {', '.join(hints)}; allowed: {', '.join(sorted(known))}")
        return data


def _one_level_down(cls: type[BaseModel], key: str, data: dict[str, Any]) -> list[str]:
    """``section.key`` for each sub-section of ``cls`` that has a field ``key`` (``train.lr`` is
    ``train.optimizer.lr``)."""
    found = []
    for name, field in cls.model_fields.items():
        value = data.get(name)
        default = field.get_default(call_default_factory=True)
        models = [type(v) for v in (value, default) if isinstance(v, BaseModel)]
        models += _model_classes(field.annotation)
        if any(key in model.model_fields for model in models):
            found.append(f"{name}.{key}")
    return found


def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models named in a type annotation (``X``, ``X | None``, ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [cls for arg in typing.get_args(annotation) for cls in _model_classes(arg)]
