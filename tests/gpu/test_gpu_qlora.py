"""The QLoRA path on a CUDA device: 4-bit load through ModelLoader, LoRA, bf16 compute, training."""

from __future__ import annotations

import pytest
import torch

from qlora_kit.config import ModelConfig, RunConfig
from qlora_kit.inspection import inspect_model
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.quant import Bnb4bit
from qlora_kit.testing import make_alpaca_rows, make_distilgpt2_shape

pytestmark = pytest.mark.gpu


def _batch(tokenizer, device):
    texts = [" ".join(row.values()) for row in make_alpaca_rows(4, seed=5)]
    ids = [tokenizer(text)["input_ids"][:32] for text in texts]
    width = min(len(row) for row in ids)
    return torch.tensor([row[:width] for row in ids], device=device)


def test_tiny_llama_4bit_bf16_lora_trains_on_gpu(tiny_llama_dir, gpu_device):
    loader = ModelLoader(
        ModelConfig(name_or_path=str(tiny_llama_dir)), Bnb4bit.Config(compute_dtype="bfloat16"), gpu_device
    )
    model, tokenizer = loader.load()
    linear4 = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert linear4 and all(
        m.weight.device.type == "cuda" and m.compute_dtype == torch.bfloat16 for m in linear4
    )
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    prepare_for_training(model, grad_checkpointing=True)
    model = AdapterBuilder(AdapterBuilder.Config(r=8, alpha=16, dropout=0.0)).apply(model)
    packed_before = {id(m): m.weight.data.clone() for m in linear4}
    batch = _batch(tokenizer, gpu_device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(30):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.3, losses
    assert all(torch.equal(m.weight.data, packed_before[id(m)]) for m in linear4)  # base untouched


def test_inspect_distilgpt2_shape_on_gpu(tmp_path, gpu_device):
    make_distilgpt2_shape(tmp_path)
    cfg = RunConfig.model_validate(
        {
            "model": {"name_or_path": str(tmp_path)},
            "quant": {
                "kind": "bnb_4bit",
                "quant_type": "nf4",
                "double_quant": True,
                "compute_dtype": "bfloat16",
            },
            "adapter": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["c_attn", "c_proj", "c_fc"]},
        }
    )
    report = inspect_model(cfg, device=gpu_device)
    assert report.params_by_storage["4-bit"] == 42_467_328
    assert report.adapter.trainable_measured == 589_824 and report.adapter.total_params == 82_502_400
    assert f"{report.quantized_footprint_bytes / 1024**2:.2f}" == "95.49"
