"""The seed document's dataset flow (its section 3.2), reproduced step by step for comparison.

The seed formats every row with its Alpaca template into a ``text`` column, then tokenizes it with
``truncation=True, padding="max_length"``. That trains on prompt and padding alike and appends no EOS;
the library's own pipeline (``alpaca_seed`` formatter) keeps the template but fixes the labels.
"""

from __future__ import annotations

from typing import Any

from qlora_kit.formatting.alpaca import SEED_TEMPLATE

SEED_PROMPT = SEED_TEMPLATE + "{}"
"""The seed's ``alpaca_prompt``: the template with the response placeholder."""


def seed_dataset_flow(
    dataset: Any, tokenizer: Any, n: int = 1000, seed: int = 42
) -> tuple[Any, list[list[str]]]:
    """Run the seed's steps on ``dataset`` and record its columns after each one.

    Args:
        dataset: A ``datasets.Dataset`` with ``instruction``, ``input`` and ``output`` columns.
        tokenizer: The tokenizer (the seed sets ``pad_token = eos_token`` beforehand).
        n: Rows of the subset.
        seed: Shuffle seed of the subset.

    Returns:
        The final dataset and the column lists after loading, subsetting, formatting and tokenizing.
    """
    columns = [list(dataset.column_names)]
    subset = dataset.shuffle(seed=seed).select(range(min(n, len(dataset))))
    columns.append(list(subset.column_names))

    def formatting_prompts_func(examples: dict[str, list[str]]) -> dict[str, list[str]]:
        rows = zip(examples["instruction"], examples["input"], examples["output"], strict=True)
        return {"text": [SEED_PROMPT.format(i, x, o) for i, x, o in rows]}

    subset = subset.map(formatting_prompts_func, batched=True)
    columns.append(list(subset.column_names))
    subset = subset.map(lambda s: tokenizer(s["text"], truncation=True, padding="max_length"), batched=True)
    columns.append(list(subset.column_names))
    return subset, columns
