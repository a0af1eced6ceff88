"""The base of every config section: strictness, docstrings as descriptions, `kind` unions."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Tag, model_validator

DType = Literal["bfloat16", "float16", "float32"]


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, instances are immutable."""

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


def kind_union(*classes: type[StrictModel]) -> Any:
    """A union discriminated on ``kind`` in which a missing ``kind`` means the first class.

    So ``train.optimizer.lr=1e-4`` works as an override without restating the optimizer's kind.
    """
    default = classes[0].model_fields["kind"].default

    def tag_of(value: Any) -> str:
        return value.get("kind", default) if isinstance(value, dict) else getattr(value, "kind", default)

    members = tuple(Annotated[cls, Tag(cls.model_fields["kind"].default)] for cls in classes)
    return Annotated[Union[members], Discriminator(tag_of)]  # noqa: UP007
