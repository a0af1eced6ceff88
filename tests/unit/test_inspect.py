"""Inspection reproduces the seed's section 3 on a distilgpt2-shaped model (measured, not hard-coded)."""

from __future__ import annotations

import json

import pytest
import yaml

from qlora_kit.cli import main
from qlora_kit.config.io import load_config
from qlora_kit.inspection import inspect_model
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.quant import Bnb4bit
from qlora_kit.testing import make_distilgpt2_shape

SEED_LORA = {
    "r": 8,
    "alpha": 16,
    "dropout": 0.05,
    "bias": "none",
    "target_modules": ["c_attn", "c_proj", "c_fc"],
}
SEED_QUANT = {"kind": "bnb_4bit", "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("distilgpt2-shape")
    make_distilgpt2_shape(root / "model")
    path = root / "run.yaml"
    config = {"model": {"name_or_path": str(root / "model")}, "quant": SEED_QUANT, "adapter": SEED_LORA}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def report(config_file):
    return inspect_model(load_config(config_file), device="cpu")


def test_seed_parameter_counts(report):
    assert report.base_params == 81_912_576
    assert report.quantized_params_logical == 81_912_576
    assert report.params_by_storage == {"4-bit": 42_467_328, "bfloat16": 39_445_248}
    assert report.quantized_elements_stored == 81_912_576 - 42_467_328 // 2
    adapter = report.adapter
    assert adapter.lora_params_formula == adapter.trainable_measured == 589_824
    assert adapter.total_params == 82_502_400
    assert f"{adapter.trainable_percent:.4f}" == "0.7149"
    per_module = {row.pattern: row.per_module for row in adapter.rows}
    assert per_module == {
        "transformer.h.*.attn.c_attn": 24_576,
        "transformer.h.*.attn.c_proj": 12_288,
        "transformer.h.*.mlp.c_fc": 30_720,
        "transformer.h.*.mlp.c_proj": 30_720,
    }


def test_seed_footprints_and_their_explanation(report):
    mib = 1024**2
    assert f"{report.original_footprint_bytes / mib:.2f}" == "312.47"  # fp32, no buffers in transformers 5
    assert report.quantized_footprint_bytes == report.quantized_estimate_bytes  # 95.49 MiB
    assert f"{report.quantized_footprint_bytes / mib:.2f}" == "95.49"
    assert report.buffer_bytes == 0
    assert 0 < report.quant_constants_bytes < 2 * mib
    notes = "\n".join(report.notes)
    assert "318.47 MiB (original) and 101.49 MiB (quantized)" in notes  # the seed's figures, recomputed
    assert "312.47 MiB: an arithmetic slip" in notes


def test_conv1d_becomes_transposed_linear4bit(report):
    modules = {m.name: m for m in report.replaced_modules}
    assert len(modules) == 24
    c_attn = modules["transformer.h.0.attn.c_attn"]
    assert c_attn.before == "Conv1D(nf=2304, nx=768)"
    assert c_attn.after == "Linear4bit(in_features=768, out_features=2304, bias=True)"
    assert modules["transformer.h.0.mlp.c_proj"].after.startswith(
        "Linear4bit(in_features=3072, out_features=768"
    )
    params = {p.name: p for p in report.params}
    weight = params["transformer.h.0.attn.c_attn.weight"]
    assert (weight.shape_before, weight.dtype_before) == ([768, 2304], "float32")
    assert (weight.shape_after, weight.dtype_after, weight.bits) == ([884736, 1], "uint8", 4)
    assert weight.logical_shape == [2304, 768]
    assert params["transformer.h.0.mlp.c_proj.weight"].shape_after == [1179648, 1]
    assert params["transformer.wte.weight"].dtype_after == "bfloat16"


def test_report_renders_as_table_and_json(report):
    table = report.to_table()
    for text in ("81,912,576", "42,467,328", "589,824", "82,502,400", "0.7149%", "[884736, 1] uint8"):
        assert text in table
    assert "transformer.h.5." not in table  # repeated blocks are summarised
    data = json.loads(report.to_json())
    assert data["adapter"]["trainable_measured"] == 589_824
    assert len(data["params"]) == 76


def test_cli_inspect_prints_the_table(config_file, capsys):
    assert main(["inspect", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "Linear4bit(in_features=768, out_features=2304, bias=True)" in out
    assert "0.7149%" in out


def test_cli_inspect_missing_model_is_a_clean_error(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump({"model": {"name_or_path": str(tmp_path / "nowhere")}, "adapter": SEED_LORA})
    )
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.name_or_path" in err and "nowhere" in err
    assert "Traceback" not in err


def test_inspect_loaded_matches_get_memory_footprint_and_dora_arithmetic(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from qlora_kit.config import ModelConfig
    from qlora_kit.inspection import inspect_loaded
    from qlora_kit.model.loading import ModelLoader

    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    quantized = ModelLoader(
        ModelConfig(name_or_path=str(tiny_llama_dir)), Bnb4bit.Config(), "cpu"
    ).load_model()
    plain = inspect_loaded(original, quantized)
    assert plain.adapter is None
    assert plain.quantized_footprint_bytes == quantized.get_memory_footprint()

    dora = AdapterBuilder(AdapterBuilder.Config(r=4, target_modules="all-linear", use_dora=True)).apply(
        quantized
    )
    report = inspect_loaded(original, dora)
    assert report.quantized_footprint_bytes == plain.quantized_footprint_bytes  # adapter not counted
    assert report.adapter.lora_params_formula == report.adapter.trainable_measured
    assert {row.pattern.rsplit(".", 1)[-1] for row in report.adapter.rows} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    }  # fmt: skip


def test_cli_inspect_json_and_unknown_target(tiny_llama_dir, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_llama_dir)}, "adapter": {"r": 4}}))
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model_type"] == "llama" and data["adapter"]["targets"][0] == "down_proj"
    path.write_text(
        yaml.safe_dump(
            {"model": {"name_or_path": str(tiny_llama_dir)}, "adapter": {"target_modules": ["c_attn"]}}
        )
    )
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "adapter.target_modules" in err and "q_proj" in err and "Traceback" not in err
