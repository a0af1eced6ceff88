"""The pipeline end to end on the tiny 4-bit Llama: `qlora-kit train`, `generate` (also `--chat`),
`export` of a finished run, and `qlora_kit.run` from Python."""

from __future__ import annotations

import io
import json

import pytest
import yaml

from qlora_kit.cli import main as cli
from qlora_kit.recipe import run
from qlora_kit.testing import make_alpaca_rows


@pytest.fixture
def config_file(tmp_path, tiny_llama_dir):
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(make_alpaca_rows(40)))
    config = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(tiny_llama_dir)},
        "quant": {"kind": "bnb_4bit", "compute_dtype": "float32"},
        "adapter": {"r": 4, "alpha": 8},
        "data": {"source": {"path": str(rows)}, "eval": {"fraction": 0.2}, "formatter": {"kind": "chatml"},
                 "max_length": 128},
        "train": {"max_steps": 3, "micro_batch_size": 4, "optimizer": {"lr": 1e-3}},
        "export": {"kind": "adapter"},
    }  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_then_generate_chat_and_export_from_the_command_line(
    config_file, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert cli(["train", str(config_file), "train.optimizer.lr=5e-4"]) == 0
    printed = capsys.readouterr().out
    for expected in ("train loss:", "eval loss:", "peak memory:", f"adapter: {out / 'adapter'}"):
        assert expected in printed
    for name in ("run_config.yaml", "versions.json", "data_report.json", "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["eval_loss"] is not None and summary["merged_dir"] is None
    assert (
        yaml.safe_load((out / "adapter" / "run_config.yaml").read_text())["train"]["optimizer"]["lr"] == 5e-4
    )

    assert cli(["generate", str(out), "--prompt", "Say what the cat paints.", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip()

    monkeypatch.setattr("sys.stdin", io.StringIO("Say what the moon finds.\nAnd the river?\n\n"))
    assert cli(["generate", str(out), "--chat", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.count("model> ") == 2

    assert (
        cli(["export", str(out), "export.dtype=bfloat16", "export.compare_bases=true", "--kind", "merged"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "merge verified" in printed
    report = json.loads((out / "merged" / "merge_report.json").read_text())
    assert report["passed"] and report["prompt_source"] == "held-out rows"
    assert set(report["bases"]) == {"original", "dequantized"}
    assert cli(["generate", str(out), "--prompt", "Say what the cat paints.", "--max-new-tokens", "4"]) == 0


def test_a_merge_that_fails_verification_exits_non_zero(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli(
        [
            "train",
            str(config_file),
            "export.kind=merged",
            "export.merge_base=original",
            "export.max_mean_kl=1e-12",
        ]
    )
    assert code == 3
    assert "MERGE VERIFICATION FAILED" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["merge_passed"] is False


def test_run_from_python(config_file):
    result = run(str(config_file), ["train.max_steps=2", "export.kind=none"])
    assert result.train.steps == 2 and result.export.kind == "none"
    assert result.data_report.rows_kept == 32 and result.data.eval is not None
    assert any(p.requires_grad for p in result.model.parameters())
    assert "train loss:" in result.summary()


def test_bad_paths_are_input_errors(tmp_path, capsys):
    assert cli(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert "no exported model" in capsys.readouterr().err
    assert cli(["export", str(tmp_path)]) == 2
    assert "run_config.yaml" in capsys.readouterr().err


def test_bad_data_fails_before_the_model_is_loaded(config_file, tmp_path, capsys, monkeypatch):
    from qlora_kit.model.loading import ModelLoader

    def no_model(self):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(ModelLoader, "load_model", no_model)
    rows = make_alpaca_rows(20)
    rows[5]["output"] = 7  # not a string
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    assert cli(["train", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert "rows.json row 5" in err and "got int" in err
