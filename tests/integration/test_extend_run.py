"""Extending a finished run from the command line: train 4 steps, then `train.resume=auto train.max_steps=8`
continues from checkpoint-4 to step 8 on a schedule recomputed for 8 steps; the baseline evaluation at
step 0 is not repeated. The config builds on a base file (`base:`), and run_config.yaml is resolved."""

from __future__ import annotations

import json

import pytest
import yaml

from qlora_kit.cli import main as cli
from qlora_kit.testing import make_alpaca_rows

LR = 1e-3


def test_a_finished_run_continues_to_a_larger_max_steps(tmp_path, tiny_llama_dir, capsys):
    (tmp_path / "rows.json").write_text(json.dumps(make_alpaca_rows(40)))
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "base.yaml").write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_llama_dir)},
        "quant": {"kind": "bnb_4bit", "compute_dtype": "float32"},
        "adapter": {"r": 4, "alpha": 8},
        "data": {"source": {"path": str(tmp_path / "rows.json")}, "eval": {"fraction": 0.2}, "max_length": 256},
        "train": {"micro_batch_size": 4, "log_every": 1, "optimizer": {"lr": LR},
                  "scheduler": {"kind": "linear", "warmup_steps": 0}},
        "export": {"kind": "merged", "dtype": "float16"},
    }))  # fmt: skip
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"base": "recipes/base.yaml", "output_dir": str(tmp_path / "run"),
                                      "train": {"max_steps": 4}, "export": {"kind": "adapter"}}))  # fmt: skip
    out = tmp_path / "run"

    assert cli(["train", str(config)]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    resolved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert "base" not in resolved and resolved["train"]["optimizer"]["lr"] == LR
    assert resolved["export"] == {"kind": "adapter"}  # another kind than the base's: its options are gone
    capsys.readouterr()

    assert cli(["train", str(config), "train.resume=auto", "train.max_steps=8"]) == 0
    printed = capsys.readouterr().out
    assert f"resumed:    from {out / 'checkpoint-4'}" in printed and "(8 steps)" in printed
    assert json.loads((out / "summary.json").read_text())["steps"] == 8
    assert yaml.safe_load((out / "run_config.yaml").read_text())["train"]["max_steps"] == 8

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if "loss" in r}
    assert sorted(train) == list(range(1, 9))  # each step once
    assert [r["step"] for r in records if "eval_loss" in r] == [0, 4, 8]  # no second baseline on resume
    # linear decay over 4 steps, then recomputed over 8 from where the run stopped
    assert [train[s]["lr"] for s in range(1, 5)] == pytest.approx([LR * f for f in (1, 0.75, 0.5, 0.25)])
    assert [train[s]["lr"] for s in range(5, 9)] == pytest.approx([LR * f for f in (0.5, 0.375, 0.25, 0.125)])
    assert (out / "checkpoint-8").is_dir()


def test_the_trainer_page_lists_every_change_a_resume_allows():
    from pathlib import Path

    from qlora_kit.config.resume import RESUMABLE_CHANGES

    page = (Path(__file__).parents[2] / "docs" / "components" / "trainer.md").read_text()
    section = page.split("## Resuming and extending a run", 1)[1]
    assert [path for path in RESUMABLE_CHANGES if f"`{path}`" not in section] == []
