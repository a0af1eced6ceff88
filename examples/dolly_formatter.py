"""A user formatter for Dolly-style rows (instruction / context / response), registered as `dolly`.

Use it from YAML by importing this module as a plugin (it must be importable, e.g. run with
``PYTHONPATH=examples``)::

    plugins: [dolly_formatter]
    data:
      formatter: {kind: dolly, context_header: "### Context:"}

Only :meth:`render` is written here; tokenization, label masking, EOS and truncation come from
:class:`~qlora_kit.formatting.PromptFormatter`. ``qlora_kit.testing.check_formatter`` tests it.
"""

from __future__ import annotations

from typing import Any

from qlora_kit import PromptFormatter, Segment, StrictModel, formatters


class DollyOptions(StrictModel):
    """Options of the `dolly` formatter (validated when the config is loaded)."""

    context_header: str = "### Context:"
    """Header of the context section (left out when a row has no context)."""


@formatters.register("dolly")
class DollyFormatter(PromptFormatter):
    """Dolly's instruction and optional context as the prompt; the response is trained."""

    Options = DollyOptions
    required_fields = ("instruction", "response")
    optional_fields = ("context",)

    def render(self, example: dict[str, Any]) -> list[Segment]:
        prompt = f"### Instruction:\n{example['instruction']}\n\n"
        if example.get("context"):
            prompt += f"{self.options.context_header}\n{example['context']}\n\n"
        prompt += "### Response:\n"
        return [Segment(prompt, trained=False), Segment(example["response"], trained=True)]
