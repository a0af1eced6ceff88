"""The PromptFormatter contract: subclasses render an example into segments; the base class owns
tokenization, label masking and EOS (filled in by the data pipeline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class Segment:
    """A piece of the rendered example: its text, and whether the loss is computed on its tokens."""

    text: str
    trained: bool


class NoOptions(BaseModel):
    """Formatters without options."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptFormatter:
    """Base class of prompt templates. Override :meth:`render`; register with
    ``@formatters.register("name")`` from :mod:`qlora_kit.registry`."""

    Options: ClassVar[type[BaseModel]] = NoOptions
    required_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: BaseModel | dict[str, Any] | None = None):
        self.options = (
            self.Options.model_validate(options or {}) if not isinstance(options, BaseModel) else options
        )

    def render(self, example: dict[str, Any]) -> list[Segment]:
        """Turn one row into segments (prompt untrained, response trained)."""
        raise NotImplementedError
