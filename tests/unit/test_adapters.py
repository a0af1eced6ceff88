"""AdapterBuilder: target resolution, LoraConfig mapping and validation, trainable parameters."""

from __future__ import annotations

import pytest
import torch
from bitsandbytes.nn import Linear4bit

from qlora_kit.config import ModelConfig
from qlora_kit.errors import ConfigError
from qlora_kit.model.adapters import AdapterBuilder, linear_layer_names
from qlora_kit.model.loading import ModelLoader
from qlora_kit.model.quant import Bnb4bit
from qlora_kit.testing import make_distilgpt2_shape, make_tiny_llama

LLAMA_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture
def llama(tokenizer):
    return make_tiny_llama(tokenizer=tokenizer)


@pytest.fixture
def llama_4bit(tiny_llama_dir):
    return ModelLoader(ModelConfig(name_or_path=str(tiny_llama_dir)), Bnb4bit.Config(), "cpu").load_model()


def test_all_linear_excludes_the_output_head(llama, llama_4bit):
    for model in (llama, llama_4bit):
        assert AdapterBuilder(AdapterBuilder.Config()).resolve_targets(model) == LLAMA_LINEAR
        assert "lm_head" not in linear_layer_names(model)
    assert any(isinstance(llama_4bit.get_submodule(n), Linear4bit) for n in linear_layer_names(llama_4bit))


def test_all_linear_covers_gpt2_conv1d(tokenizer):
    gpt2 = make_distilgpt2_shape(n_layer=1, n_embd=64, n_head=2, vocab_size=len(tokenizer))
    assert AdapterBuilder(AdapterBuilder.Config()).resolve_targets(gpt2) == ["c_attn", "c_fc", "c_proj"]


def test_all_linear_uses_full_names_when_a_leaf_name_is_also_the_heads(llama):
    llama.lm_head, llama.model.layers[0].mlp.lm_head = llama.lm_head, torch.nn.Linear(4, 4)
    targets = AdapterBuilder(AdapterBuilder.Config()).resolve_targets(llama)
    assert "model.layers.0.mlp.lm_head" in targets and "lm_head" not in targets


def test_unknown_target_names_the_field_and_the_modules(llama):
    with pytest.raises(ConfigError) as info:
        AdapterBuilder(AdapterBuilder.Config(target_modules=["q_proj", "c_attn"])).resolve_targets(llama)
    ((path, message),) = info.value.errors
    assert path == "adapter.target_modules"
    assert "'c_attn'" in message and "q_proj" in message and "embed_tokens" in message


def test_unknown_modules_to_save(llama):
    with pytest.raises(ConfigError, match="adapter.modules_to_save"):
        AdapterBuilder(AdapterBuilder.Config(modules_to_save=["wte"])).lora_config(llama)


def test_lora_config_maps_the_typed_fields(llama):
    cfg = AdapterBuilder.Config(r=4, alpha=8, dropout=0.1, bias="lora_only", target_modules=["q_proj", "v_proj"],
                        use_dora=True, use_rslora=True, modules_to_save=["lm_head"],
                        peft_overrides={"layers_to_transform": [1], "layers_pattern": "layers"})  # fmt: skip
    lora = AdapterBuilder(cfg).lora_config(llama)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.bias) == (4, 8, 0.1, "lora_only")
    assert set(lora.target_modules) == {"q_proj", "v_proj"}
    assert lora.use_dora and lora.use_rslora and lora.modules_to_save == ["lm_head"]
    assert lora.layers_to_transform == [1] and lora.task_type == "CAUSAL_LM"


def test_peft_overrides_bad_key_typed_key_and_bad_value(llama):
    with pytest.raises(ConfigError) as info:
        AdapterBuilder(
            AdapterBuilder.Config(peft_overrides={"layers_to_transfrom": [0], "lora_alpha": 3})
        ).lora_config(llama)
    errors = dict(info.value.errors)
    assert "did you mean 'layers_to_transform'" in errors["adapter.peft_overrides.layers_to_transfrom"]
    assert "adapter.alpha" in errors["adapter.peft_overrides.lora_alpha"]
    with pytest.raises(ConfigError, match="adapter.peft_overrides.layers_pattern: peft.LoraConfig rejected"):
        AdapterBuilder(AdapterBuilder.Config(peft_overrides={"layers_pattern": "layers"})).lora_config(llama)


def test_apply_trains_only_adapter_and_modules_to_save(llama_4bit):
    model = AdapterBuilder(AdapterBuilder.Config(r=4, modules_to_save=["lm_head"])).apply(llama_4bit)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".modules_to_save." in n for n in trainable)
    assert any(".modules_to_save." in n for n in trainable)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert {p.dtype for p in lora} == {torch.float32}  # adapters in fp32 on a bf16 base (see AdapterBuilder)
    expected = sum(
        4 * (m.in_features + m.out_features) for m in llama_4bit.modules() if isinstance(m, Linear4bit)
    )
    assert sum(p.numel() for p in lora) == expected
