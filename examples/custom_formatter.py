"""A custom prompt formatter: subclass ``PromptFormatter``, override ``render``, register it, test it.

The base class does tokenization, label masking, EOS and truncation; ``render`` only says which text
is prompt (not trained) and which is response (trained). Registered under a name, the formatter is
usable from YAML (``data.formatter.kind: qa``) once its module is listed in ``plugins:``::

    python examples/custom_formatter.py --max-steps 20
"""

from __future__ import annotations

import argparse
from typing import Any

from qlora_kit import PromptFormatter, Segment, StrictModel, formatters, load_config, run
from qlora_kit.quickstart import smollm2_gguf


class QAOptions(StrictModel):
    """Options of the `qa` formatter (validated when the config is loaded)."""

    system: str = "Answer in as few words as possible."
    """A line put before every question."""


@formatters.register("qa")
class QAFormatter(PromptFormatter):
    """``Q: <question>\\nA: <answer>`` with a system line; only the answer (and EOS) is trained."""

    Options = QAOptions
    required_fields = ("question", "answer")

    def render(self, example: dict[str, Any]) -> list[Segment]:
        prompt = f"{self.options.system}\nQ: {example['question']}\nA:"
        return [Segment(prompt, trained=False), Segment(" " + example["answer"], trained=True)]


def make_rows(n: int) -> list[dict[str, str]]:
    """Question/answer rows made in code (the capital of a made-up country)."""
    countries = ["Zembla", "Florin", "Genovia", "Latveria", "Elbonia", "Freedonia", "Sokovia", "Wakanda"]
    capitals = [
        "Onhava",
        "Florin City",
        "Pyrus",
        "Doomstadt",
        "Elbo",
        "Fredville",
        "Novi Grad",
        "Birnin Zana",
    ]
    return [
        {"question": f"What is the capital of {countries[i % 8]}?", "answer": capitals[i % 8]}
        for i in range(n)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", help="hub id, model directory or .gguf (default: the quickstart's SmolLM2)"
    )
    parser.add_argument("--output-dir", default="runs/custom-formatter")
    parser.add_argument("--max-steps", type=int, default=20)
    args = parser.parse_args(argv)

    from qlora_kit.model.loading import ModelLoader
    from qlora_kit.testing import check_formatter

    rows = make_rows(64)
    model = args.model or str(smollm2_gguf())
    cfg = load_config({
        "output_dir": args.output_dir,
        "model": {"name_or_path": model},
        "data": {"source": {"rows": rows}, "formatter": {"kind": "qa", "system": "Be brief."}},
        "train": {"max_steps": args.max_steps, "micro_batch_size": 8, "grad_checkpointing": False},
        "export": {"kind": "adapter"},
    })  # fmt: skip
    # Test the formatter against the contract (masks, EOS, BOS, decode round-trip) before training.
    tokenizer = ModelLoader(cfg.model, cfg.quant).load_tokenizer()
    print(f"check_formatter: {check_formatter(cfg.data.formatter.build(), rows[:8], tokenizer)} rows ok")
    print(run(cfg).summary())


if __name__ == "__main__":
    main()
