"""`quant.compute_dtype: auto` (the default): bfloat16 where the device multiplies it natively, float32 on a
CPU that would emulate it, float16 on a GPU without it; explicit dtypes kept; the concrete choice recorded
in run_config.yaml, so a resume of the same config is not refused and an export reads what was trained."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml

from qlora_kit.cli import main as cli
from qlora_kit.config import ModelConfig
from qlora_kit.model import ModelLoader, compute_dtype
from qlora_kit.model.compute_dtype import resolve_compute_dtype
from qlora_kit.testing import make_alpaca_rows

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture
def native_bf16(monkeypatch):
    """Set whether "this CPU" multiplies bfloat16 natively."""

    def set_to(value: bool) -> None:
        monkeypatch.setattr(compute_dtype, "cpu_computes_bf16", lambda: value)

    return set_to


def test_auto_follows_the_hardware_and_explicit_dtypes_stay(native_bf16, monkeypatch):
    native_bf16(False)
    assert resolve_compute_dtype("auto", CPU) == "float32"
    assert [resolve_compute_dtype(d, CPU) for d in ("bfloat16", "float16")] == ["bfloat16", "float16"]
    native_bf16(True)
    assert resolve_compute_dtype("auto", CPU) == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a T4
    assert resolve_compute_dtype("auto", CUDA) == "float16"
    assert resolve_compute_dtype("bfloat16", CUDA) == "bfloat16"  # refused later, by name (test_loading)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_compute_dtype("auto", CUDA) == "bfloat16"


@pytest.mark.parametrize("native", [False, True])
def test_the_loader_loads_the_4bit_model_in_the_resolved_dtype(tiny_llama_dir, native_bf16, native, caplog):
    native_bf16(native)
    expected = torch.bfloat16 if native else torch.float32
    loader = ModelLoader(ModelConfig(name_or_path=str(tiny_llama_dir)), {"kind": "bnb_4bit"}, "cpu")
    assert loader.quant_cfg.compute_dtype == str(expected).removeprefix("torch.")
    with caplog.at_level(logging.INFO, logger="qlora_kit.model.compute_dtype"):
        model = ModelLoader(
            ModelConfig(name_or_path=str(tiny_llama_dir)), {"kind": "bnb_4bit"}, "cpu"
        ).load_model()
    assert model.get_input_embeddings().weight.dtype == expected
    linear4 = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert linear4 and all(m.compute_dtype == expected for m in linear4)
    assert ("auto: float32" in caplog.text) is not native  # said when it is not bfloat16


def test_train_records_the_concrete_dtype_and_resumes_the_same_config(
    tmp_path, tiny_llama_dir, native_bf16, capsys
):
    """Through the CLI: no compute_dtype in the config; run_config.yaml and the adapter's provenance say
    float32 on a CPU without bfloat16, and the same config (still `auto`) extends the run."""
    native_bf16(False)
    (tmp_path / "rows.json").write_text(json.dumps(make_alpaca_rows(24)))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "run"), "model": {"name_or_path": str(tiny_llama_dir)},
        "adapter": {"r": 4, "alpha": 8},
        "data": {"source": {"path": str(tmp_path / "rows.json")}, "max_length": 128},
        "train": {"max_steps": 2, "micro_batch_size": 4}, "export": {"kind": "adapter"},
    }))  # fmt: skip
    out = tmp_path / "run"
    assert cli(["train", str(config)]) == 0
    assert yaml.safe_load((out / "run_config.yaml").read_text())["quant"]["compute_dtype"] == "float32"
    trained_on = json.loads((out / "adapter" / "qlora_kit.json").read_text())["trained_on"]
    assert trained_on["compute_dtype"] == "float32"
    assert trained_on["bitsandbytes_config"]["bnb_4bit_compute_dtype"] == "float32"
    capsys.readouterr()
    assert cli(["train", str(config), "train.resume=auto", "train.max_steps=3"]) == 0
    assert "resumed:" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
