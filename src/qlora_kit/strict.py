"""The base of every config section and every component's options: strict, frozen, self-documenting.

A leaf module (it imports nothing of the library), so that both :mod:`qlora_kit.config` and
:mod:`qlora_kit.registry` can build on it without importing each other.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

DType = Literal["bfloat16", "float16", "float32"]


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
                close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown key(s) {', '.join(hints)}; allowed: {', '.join(sorted(known))}")
        return data
