"""The example plugin's `mixed_4_8` quantization kind on a CUDA device (auto-skipped without one): the 8-bit
layers are quantized on the GPU, LoRA trains on both kinds of layer, and the merge dequantizes both."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qlora_kit import ModelLoader, load_config, prepare_for_training
from qlora_kit.export.merged import dequantized_weights
from qlora_kit.testing import perturb_lora

pytestmark = pytest.mark.gpu
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_mixed_4_8_on_gpu(tiny_llama_dir, gpu_device, qlora_tokenizer, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.syspath_prepend(str(EXAMPLES))
    import plugins.qlora_extras  # noqa: F401  (registers mixed_4_8)

    quant = {"kind": "mixed_4_8", "eight_bit_modules": ["down_proj"], "compute_dtype": "bfloat16"}
    cfg = load_config({"model": {"name_or_path": str(tiny_llama_dir)}, "quant": quant, "adapter": {"r": 4}})
    model, _ = ModelLoader(cfg.model, cfg.quant, device=gpu_device).load()
    down = model.get_submodule("model.layers.0.mlp.down_proj")
    assert type(down).__name__ == "Linear8bitLt" and down.weight.dtype == torch.int8
    assert down.weight.device.type == "cuda"
    model = cfg.adapter.build().apply(prepare_for_training(model, False))

    ids = torch.tensor([qlora_tokenizer("Say what the cat paints.")["input_ids"]], device=gpu_device)
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {
        n.split(".")[-4]: p.grad for n, p in model.named_parameters() if "lora_B" in n and "layers.0.mlp" in n
    }
    assert set(grads) == {"gate_proj", "up_proj", "down_proj"}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())

    weights = dequantized_weights(perturb_lora(model))
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    error = {
        n: (w.float().cpu() - original.get_submodule(n).weight).abs().max().item() for n, w in weights.items()
    }
    assert error["model.layers.0.mlp.down_proj"] < error["model.layers.0.mlp.up_proj"] / 4
