"""A run's exported adapter and merged model stand on their own: their README says where the base came from,
what data and settings trained it, the final losses, the merge numbers and versions, and its load code
(executed here) gives back the model that was trained."""

from __future__ import annotations

import json
import re

import pytest
import torch

from qlora_kit.export.verify import logits_of
from qlora_kit.model.quant import keep_4bit_weights_trainable
from qlora_kit.recipe import run
from qlora_kit.testing import make_alpaca_rows


def _code(readme: str) -> str:
    return re.search(r"```python\n(.*?)```", readme, re.S)[1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_llama_dir):
    out = tmp_path_factory.mktemp("card") / "run"
    result = run({
        "output_dir": str(out),
        "model": {"name_or_path": str(tiny_llama_dir), "pad_token": "add"},
        "quant": {"kind": "bnb_4bit", "compute_dtype": "float32"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"source": {"rows": make_alpaca_rows(24)}, "eval": {"fraction": 0.25}, "formatter": {"kind": "alpaca"},
                 "max_length": 256},
        "train": {"max_steps": 2, "micro_batch_size": 4, "optimizer": {"lr": 1e-3}, "log_every": 1},
        "export": {"kind": "merged", "dtype": "bfloat16"},
    })  # fmt: skip
    return result


def test_adapter_card_describes_the_run_and_its_code_loads_the_trained_model(finished, tiny_llama_dir):
    adapter = finished.output_dir / "adapter"
    readme = (adapter / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: peft\nlicense: unknown\n")
    train, data = finished.train, finished.data_report
    expected = [
        f"local directory `{tiny_llama_dir.resolve()}`",
        "4-bit NF4-quantized base (QLoRA, double quantization)",
        f"Training rows: {data.rows_loaded:,} loaded, {data.rows_kept:,} trained on",
        f"held-out rows: {data.eval_rows:,}",
        "Formatter: `alpaca`",
        "### Instruction:\n{instruction}\n\n### Response:\n[/MASKED]{output}",  # the no-input template
        f"Final train loss: {train.train_loss:.4g}",
        f"Final eval loss: {train.eval_loss:.4g}",
        "| LoRA rank r / alpha / dropout | 4 / 8 / 0 |",
        "## Merge verification",
        "| dequantized (saved) |",
        "| transformers | ",
        "| peft | ",
        "rows: <24 rows given in memory>",
    ]
    for text in expected:
        assert text in readme, text
    assert json.loads((adapter / "quantization_config.json").read_text())["bnb_4bit_quant_type"] == "nf4"

    namespace: dict = {}
    exec(_code(readme), namespace)  # the README's own code, unchanged
    inputs = [row["input_ids"] for row in finished.data.eval][:4]
    keep_4bit_weights_trainable(namespace["model"])  # the CPU kernel training used (see that function)
    reloaded, trained = logits_of(namespace["model"], inputs), logits_of(finished.model, inputs)
    assert len(namespace["tokenizer"]) == len(finished.tokenizer)  # the added pad token came along
    # Measured 0.0: the snippet rebuilds the same NF4 base, resized embedding rows and adapter (without the
    # kernel pin above, bitsandbytes' CPU inference repacking alone moves these logits by 2.5e-3).
    assert max((a - b).abs().max().item() for a, b in zip(reloaded, trained, strict=True)) < 1e-5


def test_merged_card_reports_the_merge_and_its_code_loads_the_merged_model(finished):
    merged = finished.output_dir / "merged"
    readme = (merged / "README.md").read_text()
    report = json.loads((merged / "merge_report.json").read_text())
    assert readme.startswith("---\nlibrary_name: transformers\n")
    assert report["message"] in readme
    chosen = report["bases"]["dequantized"]
    assert f"| dequantized (saved) | {chosen['mean_kl']:.3g} |" in readme
    assert f"Final train loss: {finished.train.train_loss:.4g}" in readme
    assert f"Training rows: {finished.data_report.rows_loaded:,} loaded" in readme
    record = json.loads((merged / "qlora_kit.json").read_text())
    assert record["kind"] == "merged" and record["base_model"]["kind"] == "local_dir"
    namespace: dict = {}
    exec(_code(readme), namespace)
    assert namespace["model"].dtype == torch.bfloat16
    assert type(namespace["model"]).__name__ == "LlamaForCausalLM"
