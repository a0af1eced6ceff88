"""The seed's dataset flow (its section 3.2) and the opt-in measurement on the shared Alpaca demo file."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from qlora_kit.config import DataConfig
from qlora_kit.data import build_datasets, build_formatter
from qlora_kit.formatting.alpaca import REFERENCE_TEMPLATE
from qlora_kit.testing import make_alpaca_rows, make_tokenizer

DEMO = Path(__file__).resolve().parents[3] / "shared" / "data" / "alpaca_en_demo.json"
GPT2 = Path(__file__).resolve().parents[3] / "shared" / "assets" / "gpt2-tokenizer"
SEED_PROMPT = REFERENCE_TEMPLATE + "{}"
"""The reference recipe's ``alpaca_prompt``: the template with the response placeholder."""


def reference_dataset_flow(dataset, tokenizer, n=1000, seed=42):
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


def test_seed_flow_columns_after_each_map_step():
    tokenizer = make_tokenizer(model_max_length=160)
    tokenizer.pad_token = tokenizer.eos_token  # as the seed does
    rows = [
        {"output": r["output"], "input": r["input"], "instruction": r["instruction"]}
        for r in make_alpaca_rows(30)
    ]
    final, columns = reference_dataset_flow(datasets.Dataset.from_list(rows), tokenizer, n=10)
    assert columns == [
        ["output", "input", "instruction"],
        ["output", "input", "instruction"],
        ["output", "input", "instruction", "text"],
        ["output", "input", "instruction", "text", "input_ids", "attention_mask"],
    ]
    assert final.num_rows == 10
    assert {len(ids) for ids in final["input_ids"]} == {160}  # padding="max_length"
    # The seed's text is exactly what the alpaca_reference formatter renders (prompt + response).
    formatter = build_formatter("alpaca_reference")
    row = final[0]
    assert row["text"] == "".join(s.text for s in formatter.render(row))


@pytest.mark.skipif(not (DEMO.is_file() and GPT2.is_dir()), reason="needs ../shared (not shipped)")
def test_demo_report_runs_in_seconds():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(GPT2), model_max_length=1024)
    cfg = DataConfig.model_validate(
        {"source": {"path": str(DEMO)}, "formatter": {"kind": "alpaca_reference"}, "padding": "max_length"}
    )
    report = build_datasets(cfg, build_formatter(cfg.formatter), tokenizer, micro_batch_size=2).report
    assert report.rows_kept == report.rows_loaded > 900
    assert report.seconds < 30
    assert (
        report.efficiency["packing"].real_fraction
        > 3 * report.efficiency["padding: max_length"].real_fraction
    )
