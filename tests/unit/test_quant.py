"""quant: config -> BitsAndBytesConfig, dtype names, and the CPU repacking guard."""

from __future__ import annotations

import pytest
import torch
from bitsandbytes.functional import has_avx512bf16
from bitsandbytes.nn import Linear4bit

from qlora_kit.config import ModelConfig
from qlora_kit.errors import ConfigError
from qlora_kit.model.loading import ModelLoader
from qlora_kit.model.quant import (
    Bnb4bit,
    Bnb8bit,
    NoQuant,
    keep_4bit_weights_trainable,
    torch_dtype,
)


class _Loader:
    """Stands in for ModelLoader: the unquantized modules are the extra ones as given."""

    def unquantized_modules(self, extra):
        return list(extra) or None


def build_bnb_config(cfg):
    return cfg.build().load_kwargs(_Loader()).get("quantization_config")


def test_4bit_config_maps_every_field():
    cfg = build_bnb_config(
        Bnb4bit.Config(
            quant_type="fp4", double_quant=False, compute_dtype="float16", quant_storage="bfloat16"
        )
    )
    assert cfg.load_in_4bit and not cfg.load_in_8bit
    assert cfg.bnb_4bit_quant_type == "fp4"
    assert cfg.bnb_4bit_use_double_quant is False
    assert cfg.bnb_4bit_compute_dtype == torch.float16
    assert cfg.bnb_4bit_quant_storage == torch.bfloat16
    assert cfg.llm_int8_skip_modules is None  # transformers' defaults (the output head) apply


def test_seed_config_and_other_kinds():
    seed = build_bnb_config(Bnb4bit.Config(compute_dtype="bfloat16"))  # the seed config names bf16
    assert (seed.bnb_4bit_quant_type, seed.bnb_4bit_use_double_quant, seed.bnb_4bit_compute_dtype) == (
        "nf4",
        True,
        torch.bfloat16,
    )
    eight = build_bnb_config(Bnb8bit.Config(threshold=5.0, skip_modules=["lm_head"]))
    assert (
        eight.load_in_8bit and eight.llm_int8_threshold == 5.0 and eight.llm_int8_skip_modules == ["lm_head"]
    )
    assert build_bnb_config(NoQuant.Config()) is None


def test_torch_dtype_names():
    assert torch_dtype("bfloat16") is torch.bfloat16 and torch_dtype("float32") is torch.float32
    with pytest.raises(ConfigError, match="unknown dtype 'fp8'"):
        torch_dtype("fp8")


@pytest.fixture
def quantized(tiny_llama_dir):
    return ModelLoader(
        ModelConfig(name_or_path=str(tiny_llama_dir)), Bnb4bit.Config(compute_dtype="float32"), "cpu"
    )


def _packed(model):
    return sum(
        bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
        for m in model.modules()
        if isinstance(m, Linear4bit)
    )


def test_loaded_models_never_repack_in_eval(quantized):
    model = quantized.load_model()
    model.eval()
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 4]]))
    assert _packed(model) == 0


@pytest.mark.skipif(not has_avx512bf16(), reason="bitsandbytes only repacks on CPUs with AVX512-BF16")
def test_guard_undoes_repacking_and_restores_autograd(quantized):
    model = quantized.load_model()
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = True  # what bitsandbytes sets on such CPUs
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        expected = model(ids).logits  # eval + no_grad: this pass repacks
    assert _packed(model) == 14
    assert keep_4bit_weights_trainable(model) == 14
    assert _packed(model) == 0 and keep_4bit_weights_trainable(model) == 0
    # Packed, a Linear4bit passes no gradient to its input (x.grad stays None); restored, it does.
    x = torch.randn(2, model.config.hidden_size, requires_grad=True)
    model.model.layers[0].self_attn.q_proj(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():  # same function up to the bf16 rounding of absmax the repacking did
        assert torch.allclose(model(ids).logits, expected, atol=1e-2)
