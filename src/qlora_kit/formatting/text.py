"""Plain completion: the whole text is trained (language-model continued pretraining)."""

from __future__ import annotations

from typing import Any

from qlora_kit.formatting.base import PromptFormatter, Segment
from qlora_kit.registry import formatters
from qlora_kit.strict import StrictModel


class TextOptions(StrictModel):
    """Options of the `text` formatter."""

    field: str = "text"
    """Column holding the text."""


@formatters.register("text")
class TextFormatter(PromptFormatter):
    """One trained segment: the row's text field."""

    Options = TextOptions

    @property
    def required_fields(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.options.field,)

    def render(self, example: dict[str, Any]) -> list[Segment]:
        return [Segment(example[self.options.field], trained=True)]
