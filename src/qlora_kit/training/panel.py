"""The generation panel: greedy completions of ``train.generation_prompts`` at each evaluation, written
to ``generations.jsonl``, so a run shows what the model answers as it trains.

Each prompt is an instruction or user message, rendered by the run's formatter exactly as
``qlora-kit generate`` renders it (the training prompt format, up to where the response starts) and cut
at the formatter's stop tokens. Without a formatter (a :class:`~qlora_kit.training.Trainer` built in
Python without one) the prompts are tokenized as written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qlora_kit.files import writing
from qlora_kit.generation import complete, prompt_ids
from qlora_kit.training.evaluation import GENERATIONS_FILE


def panel_prompt_ids(prompt: str, tokenizer: Any, formatter: Any = None) -> list[int]:
    """Token ids the model is given for ``prompt``: formatted as in training when there is a formatter."""
    if formatter is None:
        return tokenizer(prompt)["input_ids"]
    return prompt_ids(formatter, tokenizer, formatter.prompt_example(prompt))


def generate_panel(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    step: int,
    output_dir: Path,
    max_new_tokens: int = 64,
    formatter: Any = None,
) -> list[dict[str, Any]]:
    """Greedy completions of ``prompts`` (formatted by ``formatter``), appended to ``generations.jsonl``.

    Returns:
        One ``{step, prompt, completion}`` record per prompt.
    """
    ids = [panel_prompt_ids(prompt, tokenizer, formatter) for prompt in prompts]
    stops = formatter.stop_token_ids(tokenizer) if formatter is not None else [tokenizer.eos_token_id]
    completions = [
        complete(model, tokenizer, [one], [s for s in stops if s is not None], max_new_tokens=max_new_tokens)[
            0
        ]
        for one in ids  # one at a time: no padding, so a completion does not depend on the others' lengths
    ]
    records = [
        {"step": step, "prompt": p, "completion": c} for p, c in zip(prompts, completions, strict=True)
    ]
    path = Path(output_dir) / GENERATIONS_FILE
    with writing(path), path.open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return records
