"""Alpaca templates: the reference recipe's verbatim template and Stanford's two templates."""

from __future__ import annotations

from typing import Any

from qlora_kit.formatting.base import PromptFormatter, Segment
from qlora_kit.registry import formatters

REFERENCE_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{}\n\n### Input:\n{}\n\n### Response:\n"
)


@formatters.register("alpaca_reference", aliases=("alpaca_seed",))
class AlpacaReferenceFormatter(PromptFormatter):
    """The reference recipe's Alpaca template verbatim, with the Input section even when it is empty."""

    required_fields = ("instruction", "output")
    optional_fields = ("input",)

    def render(self, example: dict[str, Any]) -> list[Segment]:
        prompt = REFERENCE_TEMPLATE.format(example["instruction"], example.get("input") or "")
        return [Segment(prompt, trained=False), Segment(example["output"], trained=True)]


@formatters.register("alpaca")
class AlpacaFormatter(PromptFormatter):
    """Stanford Alpaca: the with-input template, or the no-input one when `input` is empty."""

    required_fields = ("instruction", "output")
    optional_fields = ("input",)

    def render(self, example: dict[str, Any]) -> list[Segment]:
        instruction, context = example["instruction"], example.get("input") or ""
        if context:
            prompt = (
                "Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n"
                f"### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
            )
        else:
            prompt = (
                "Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request.\n\n"
                f"### Instruction:\n{instruction}\n\n### Response:\n"
            )
        return [Segment(prompt, trained=False), Segment(example["output"], trained=True)]
