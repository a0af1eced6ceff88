"""What `qlora-kit train` shows a user with stderr redirected (not a terminal), what its train.log keeps,
and the generation panel's prompts formatted as `qlora-kit generate` formats them."""

from __future__ import annotations

import json
import logging
import re
import sysconfig
import warnings
from pathlib import Path

import pytest
import yaml

from qlora_kit.cli import main as cli
from qlora_kit.model.loading import ModelLoader
from qlora_kit.testing import make_alpaca_rows

LIBRARY_FILE = str(Path(sysconfig.get_paths()["purelib"]) / "somelib" / "ops.py")


@pytest.fixture
def noisy_library(monkeypatch):
    """Loading the model makes a third-party library log a warning and raise a FutureWarning, as
    bitsandbytes and transformers do (whether they do depends on the CPU and the versions)."""
    load = ModelLoader.load

    def noisy_load(self, *args, **kwargs):
        # a record made where a library's code lives (records from this test file would be the user's own)
        logger = logging.getLogger("somelib.backends")
        logger.handle(logger.makeRecord(logger.name, logging.WARNING, LIBRARY_FILE, 12,
                                        "Failed to load a fast kernel; using the slow one", None, None))  # fmt: skip
        warnings.warn_explicit("`old_api` is deprecated", FutureWarning, LIBRARY_FILE, 7)
        return load(self, *args, **kwargs)

    monkeypatch.setattr(ModelLoader, "load", noisy_load)


@pytest.fixture
def config_file(tmp_path, tiny_llama_dir):
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(make_alpaca_rows(30)))
    config = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(tiny_llama_dir)},
        "quant": {"kind": "bnb_4bit", "compute_dtype": "float32"},
        "adapter": {"r": 4, "alpha": 8},
        "data": {"source": {"path": str(rows)}, "eval": {"fraction": 0.2}, "formatter": {"kind": "alpaca"},
                 "max_length": 256},
        "train": {"max_steps": 4, "micro_batch_size": 4, "log_every": 2, "eval_every": 2,
                  "generation_prompts": ["Say what the cat paints."]},
        "export": {"kind": "merged", "dtype": "float16"},
    }  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_shows_phases_and_plain_progress_lines_and_keeps_library_noise_in_train_log(
    config_file, tmp_path, capsys, noisy_library
):
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # the FutureWarning is raised once per test session otherwise
        assert cli(["train", str(config_file)]) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert "\r" not in err  # no progress bar drawn into a file
    assert "Failed to load a fast kernel" not in err and "old_api" not in err
    lines = err.splitlines()
    starts = [line.split(":")[0] for line in lines if line.endswith(" ...")]
    assert starts == ["data", "model", "train", "export", "verify"]
    for name in ("data", "model", "train", "verify", "export"):
        assert any(re.match(rf"{name}: .*  \[\d+\.\d s\]$", line) for line in lines), name
    assert any(line.startswith("data: 30 rows -> 24 train, 6 eval;") for line in lines)
    first = next(line for line in lines if line.startswith("train: step "))
    assert re.match(
        r"train: step 1/4 \(25%\)  loss \d+\.\d{4}  eta \?  elapsed ", first
    )  # the loss from step 1
    assert any(line.startswith("train: step 4/4 (100%)  loss ") for line in lines)
    evals = {line.split("  ")[0] for line in lines if line.startswith("eval: step ")}
    assert {"eval: step 2", "eval: step 4"} <= evals
    assert re.fullmatch(
        rf"\(\d+ warnings from other libraries in {re.escape(str(out / 'train.log'))}\)", lines[-1]
    )

    log = (out / "train.log").read_text()
    for kept in ("Failed to load a fast kernel", "FutureWarning: `old_api` is deprecated", "data: 30 rows",
                 "train: step 4/4", "verify: merge verified"):  # fmt: skip
        assert kept in log
    assert "train.log" not in json.loads((out / "manifest.json").read_text())["files"]  # a log may grow

    assert re.search(r"train loss: \d+\.\d{4} \(mean of steps 3-4\)", captured.out)
    report = (out / "data_report.txt").read_text()
    assert re.search(r"in source +30 ", report) and re.search(r"held out +6 ", report)
    assert re.search(r"for training +24\n", report)


def test_generation_panel_formats_prompts_like_generate(tiny_llama_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from qlora_kit.formatting import build_formatter
    from qlora_kit.generation import LoadedModel, generate
    from qlora_kit.training.panel import generate_panel, panel_prompt_ids

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    prompts = ["Say what the cat paints.", "Name a bird."]
    for kind, starts_response in (("chatml", "<|im_start|>assistant\n"), ("alpaca", "### Response:\n")):
        formatter = build_formatter({"kind": kind}, tokenizer)
        text = tokenizer.decode(panel_prompt_ids(prompts[0], tokenizer, formatter))
        assert text.endswith(starts_response) and prompts[0] in text
        records = generate_panel(
            model, tokenizer, prompts, 2, tmp_path, max_new_tokens=8, formatter=formatter
        )
        loaded = LoadedModel(model, tokenizer, formatter, None, "merged", tmp_path)
        assert [r["completion"] for r in records] == [generate(loaded, p, max_new_tokens=8) for p in prompts]
    written = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [(r["step"], r["prompt"]) for r in written] == [(2, p) for p in prompts] * 2
