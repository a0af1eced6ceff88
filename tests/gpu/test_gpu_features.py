"""Sampling with a seed and the GGUF export on a CUDA device (auto-skipped without one)."""

from __future__ import annotations

import json

import pytest
import torch

from qlora_kit.config.io import load_config
from qlora_kit.decoding import Sampling, complete
from qlora_kit.export import build_exporter
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.testing import make_tiny_llama, perturb_lora


@pytest.mark.gpu
def test_seeded_sampling_is_reproducible_on_gpu_and_leaves_the_rng_alone(tokenizer, gpu_device):
    model = make_tiny_llama(tokenizer=tokenizer).to(gpu_device)
    prompts = [tokenizer("Say what the cat paints.")["input_ids"], tokenizer("Count.")["input_ids"]]
    sampling = Sampling(temperature=1.5, top_k=100, top_p=0.95, seed=3)
    state = torch.cuda.get_rng_state(gpu_device)
    first = complete(
        model, tokenizer, prompts, [tokenizer.eos_token_id], max_new_tokens=16, sampling=sampling
    )
    assert torch.equal(torch.cuda.get_rng_state(gpu_device), state)  # the caller's random state is kept
    again = complete(
        model, tokenizer, prompts, [tokenizer.eos_token_id], max_new_tokens=16, sampling=sampling
    )
    other = complete(model, tokenizer, prompts, [tokenizer.eos_token_id], max_new_tokens=16,
                     sampling=Sampling(temperature=1.5, top_k=100, top_p=0.95, seed=4))  # fmt: skip
    assert first == again and first != other


@pytest.mark.gpu
def test_gguf_export_on_gpu(tiny_llama_dir, tmp_path, gpu_device):
    cfg = load_config({
        "output_dir": str(tmp_path),
        "model": {"name_or_path": str(tiny_llama_dir)},
        "quant": {"kind": "bnb_4bit", "compute_dtype": "bfloat16"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"source": {"rows": [{"instruction": "x", "output": "y"}]}, "formatter": {"kind": "alpaca"}},
        "export": {"kind": "gguf", "dtype": "bfloat16", "gguf_dtype": "q8_0"},
    })  # fmt: skip
    model, tok = ModelLoader(cfg.model, cfg.quant, device=gpu_device).load()
    model = AdapterBuilder(cfg.adapter).apply(prepare_for_training(model, False))
    perturb_lora(model)
    result = build_exporter(cfg.export).export(model, tok, tmp_path, cfg)
    report = json.loads((result.merged_dir / "merge_report.json").read_text())
    assert report["passed"] and report["gguf"]["passed"], report["gguf"]["message"]
    assert result.gguf_file == tmp_path / "gguf" / "model-q8_0.gguf" and not result.merge_failed
