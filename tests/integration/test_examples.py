"""Every example config validates and trains a few steps on the tiny model; every example script runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from qlora_kit.cli import main as cli
from qlora_kit.config.io import load_config
from qlora_kit.testing import make_alpaca_rows

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CONFIGS = sorted((EXAMPLES / "configs").glob("*.yaml"))
# plugins.yaml names Llama layers (down_proj): tests/integration/test_plugins.py trains it, through the CLI;
# llama8b_qlora.yaml names a shape without weights, for `qlora-kit plan` (docs/memory.md, run by test_docs)
GPT2_CONFIGS = [config for config in CONFIGS if config.name not in ("plugins.yaml", "llama8b_qlora.yaml")]


@pytest.fixture
def in_repo(monkeypatch):
    """Examples use paths relative to the repository root and import plugins from examples/."""
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(EXAMPLES))


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rows") / "alpaca.json"
    path.write_text(json.dumps(make_alpaca_rows(32)))
    return path


def test_the_examples_are_there():
    names = {p.name for p in CONFIGS}
    assert {"seed_distilgpt2_alpaca.yaml", "seed_improved.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_example_config_validates(config, in_repo):
    cfg = load_config(config)
    assert cfg.output_dir


def test_seed_config_is_the_seed_recipe(in_repo):
    cfg = load_config(EXAMPLES / "configs" / "seed_distilgpt2_alpaca.yaml")
    assert (cfg.model.name_or_path, cfg.model.pad_token) == ("distilbert/distilgpt2", "eos")
    assert (cfg.quant.kind, cfg.quant.quant_type, cfg.quant.double_quant, cfg.quant.compute_dtype) == (
        "bnb_4bit", "nf4", True, "bfloat16")  # fmt: skip
    assert (cfg.adapter.r, cfg.adapter.alpha, cfg.adapter.dropout, cfg.adapter.target_modules) == (
        8, 16, 0.05, ["c_attn", "c_proj", "c_fc"])  # fmt: skip
    d = cfg.data
    assert (d.source.path, d.subset.n, d.subset.seed, d.formatter.kind) == (
        "yahma/alpaca-cleaned",
        1000,
        42,
        "alpaca_reference",
    )
    assert (d.train_on_inputs, d.max_length, d.padding, d.packing) == (True, 1024, "max_length", "auto")
    t = cfg.train
    assert (t.epochs, t.micro_batch_size, t.grad_accum, t.grad_checkpointing, t.max_grad_norm) == (
        3,
        2,
        5,
        True,
        0.3,
    )
    assert (t.optimizer.kind, t.optimizer.lr, t.optimizer.weight_decay) == ("adamw_8bit", 2e-4, 0.01)
    assert (t.scheduler.kind, t.scheduler.warmup_ratio) == ("linear", 0.03)
    e = cfg.export
    assert (e.kind, e.dtype, e.max_shard_size, e.merge_base) == ("merged", "float16", "2GB", "original")


def _tiny_overrides(config: Path, model_dir: Path, rows: Path, out: Path) -> list[str]:
    overrides = [
        f"model.name_or_path={model_dir}",
        f"output_dir={out}",
        "train.max_steps=2",
        "data.max_length=128",
    ]
    source = load_config(config).data.source.path
    if source and not Path(source).exists():
        overrides += [f"data.source.path={rows}", "data.subset.n=24"]  # hub data -> local rows
    return overrides


@pytest.mark.parametrize("config", GPT2_CONFIGS, ids=lambda p: p.stem)
def test_example_config_trains_on_the_tiny_model(config, in_repo, tiny_gpt2_dir, rows_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli(["train", str(config), *_tiny_overrides(config, tiny_gpt2_dir, rows_file, out)])
    captured = capsys.readouterr()
    printed = captured.out
    assert code in (0, 3), captured.err[-2000:]  # 3: a merge flagged by verification (reported, not a crash)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["train_loss"] is not None
    assert "train loss:" in printed and str(out) in printed
    # GPT-2's spelled-out GELU ran as one fused kernel; the merged model (checked below) has its own back
    assert "activations: 2 tanh-approximated GELUs run as one fused kernel" in (out / "train.log").read_text()
    if load_config(config).export.kind == "merged":
        assert (out / "merged" / "merge_report.json").is_file()


def test_16_bit_norms_are_hooked_only_under_autocast(in_repo, tiny_gpt2_dir, rows_file, tmp_path):
    config = EXAMPLES / "configs" / "seed_improved.yaml"
    logs = {}
    for precision in ("auto", "bf16"):  # auto: none on the CPU; bf16: autocast, as on a GPU
        out = tmp_path / precision
        code = cli(["train", str(config), *_tiny_overrides(config, tiny_gpt2_dir, rows_file, out),
                    f"train.mixed_precision={precision}", "export.kind=adapter"])  # fmt: skip
        assert code == 0
        logs[precision] = (out / "train.log").read_text()
    assert "norms: 5 LayerNorms return the model's 16-bit dtype under autocast" in logs["bf16"]
    assert "norms:" not in logs["auto"]


def _script(name: str):
    return _path_module(EXAMPLES / f"{name}.py")


def test_library_api_example(tiny_llama_dir, rows_file, tmp_path, capsys):
    _script("library_api").main(["--model", str(tiny_llama_dir), "--data", str(rows_file),
                                 "--output-dir", str(tmp_path), "--max-steps", "2"])  # fmt: skip
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert "train loss:" in capsys.readouterr().out


def test_custom_formatter_example(tiny_llama_dir, tmp_path, capsys):
    _script("custom_formatter").main(
        ["--model", str(tiny_llama_dir), "--output-dir", str(tmp_path), "--max-steps", "2"]
    )
    printed = capsys.readouterr().out
    assert "check_formatter: 8 rows ok" in printed
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_custom_loop_example(tiny_llama_dir, rows_file, tmp_path, capsys):
    _script("custom_loop").main(["--model", str(tiny_llama_dir), "--data", str(rows_file),
                                 "--output-dir", str(tmp_path), "--max-steps", "2"])  # fmt: skip
    assert "step 2: loss" in capsys.readouterr().out
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_config_reference_is_up_to_date():
    """docs/config-reference.md is generated from the config models: regenerate it when they change."""
    generator = _path_module(ROOT / "docs" / "gen_config_reference.py")
    assert generator.main(["--check"]) == 0, "run: python docs/gen_config_reference.py"


def _path_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
