"""How a plugin's author tests it: qlora_kit's pytest plugin gives the fixtures, ``qlora_kit.testing`` the
builders and checks. Run it as any test file (docs/plugins.md)::

    python -m pytest examples/test_my_plugins.py

``qlora_tokenizer`` and ``tiny_llama_dir`` are fixtures of qlora_kit's pytest plugin, which pytest loads by
itself where qlora_kit is installed (else add ``-p qlora_kit.testing.plugin``). pytest puts this file's
directory, ``examples/``, on ``sys.path``, so the plugins import as a config's ``plugins:`` names them.
"""

from __future__ import annotations

import json

import dolly_formatter  # noqa: F401  (registers the `dolly` formatter)
import plugins.qlora_extras  # noqa: F401  (registers mixed_4_8, publish, label_smoothing, status_file)
import pytest
import torch

from qlora_kit import ModelLoader, formatters, load_config, losses, prepare_for_training
from qlora_kit.errors import ExportError
from qlora_kit.export.merged import dequantized_weights
from qlora_kit.testing import check_formatter, perturb_lora
from qlora_kit.training.loss import causal_lm_loss
from qlora_kit.training.state import TrainerState

ROWS = [
    {"instruction": "Who wrote Moby-Dick?", "context": "", "response": "Herman Melville."},
    {"instruction": "Summarize.", "context": "Rain flooded the fields.", "response": "It flooded."},
]


def _load(model_dir, quant):
    """The run config, the tiny model loaded per ``quant`` and ready for LoRA, and its tokenizer."""
    cfg = load_config({"model": {"name_or_path": str(model_dir)}, "quant": quant,
                       "adapter": {"r": 4, "alpha": 8, "dropout": 0.0}})  # fmt: skip
    model, tokenizer = ModelLoader(cfg.model, cfg.quant, device="cpu").load()
    return cfg, prepare_for_training(model, False), tokenizer


# ------------------------------------------------------------------------------------------ formatter


def test_the_dolly_formatter_keeps_the_contract(qlora_tokenizer):
    formatter = formatters.make("dolly", context_header="### Context:").build()
    assert check_formatter(formatter, ROWS, qlora_tokenizer) == len(ROWS)


# ------------------------------------------------------------------------------------ quantization kind

MIXED = {"kind": "mixed_4_8", "eight_bit_modules": ["down_proj"], "compute_dtype": "float32"}


def test_mixed_4_8_stores_down_proj_in_8_bits_and_the_rest_in_4(tiny_llama_dir):
    _, model, _ = _load(tiny_llama_dir, MIXED)
    kinds = {name: type(m).__name__ for name, m in model.named_modules() if name.endswith("_proj")}
    assert {k for n, k in kinds.items() if n.endswith("down_proj")} == {"Linear8bitLt"}
    assert {k for n, k in kinds.items() if not n.endswith("down_proj")} == {"Linear4bit"}


def test_lora_trains_on_the_4_and_the_8_bit_layers(tiny_llama_dir, qlora_tokenizer):
    cfg, model, _ = _load(tiny_llama_dir, MIXED)
    model = cfg.adapter.build().apply(model)
    ids = torch.tensor([qlora_tokenizer("Say what the cat paints.")["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n and "layers.0.mlp" in n}
    assert {n.split(".")[-4] for n in grads} == {"gate_proj", "up_proj", "down_proj"}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_the_merge_dequantizes_both_kinds_of_layer(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    cfg, model, _ = _load(tiny_llama_dir, MIXED)
    weights = dequantized_weights(perturb_lora(cfg.adapter.build().apply(model)))
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    error = {n: (w.float() - original.get_submodule(n).weight).abs().max().item() for n, w in weights.items()}
    assert len(error) == 2 * 7  # every projection of both layers
    eight, four = error["model.layers.0.mlp.down_proj"], error["model.layers.0.mlp.up_proj"]
    assert eight < four / 4 and four < 0.02  # int8 rounds ~10x finer than NF4


# ---------------------------------------------------------------------------------------- loss kind


def test_label_smoothing_is_the_summed_smoothed_cross_entropy(tiny_llama_dir, qlora_tokenizer):
    _, model, _ = _load(tiny_llama_dir, {"kind": "none", "compute_dtype": "float32"})
    ids = torch.tensor([qlora_tokenizer("Say what the cat paints.")["input_ids"]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    plain = losses.make("label_smoothing", smoothing=0.0).build().prepare(model)(model, batch)
    torch.testing.assert_close(plain, causal_lm_loss(model, batch))
    smoothed = losses.make("label_smoothing", smoothing=0.1).build().prepare(model)(model, batch)
    logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    nll, uniform = -logp.gather(1, ids[0, 1:, None]).sum(), -logp.mean(-1).sum()
    torch.testing.assert_close(smoothed, 0.9 * nll + 0.1 * uniform)


# --------------------------------------------------------------------------------- callback, exporter


def test_status_file_follows_the_run(tmp_path):
    status = tmp_path / "status.json"
    callback = load_config({"train": {"callbacks": [{"kind": "status_file", "path": str(status)}]}})
    callback = callback.train.callbacks[0].build()
    state = TrainerState(total_steps=2, steps_per_epoch=2)
    callback.on_train_begin(state)
    state.step = 1
    callback.on_step_end(state, {"loss": 5.5})
    assert json.loads(status.read_text())["status"] == "running"
    state.step = 2
    callback.on_train_end(state)
    assert json.loads(status.read_text()) | {"updated": None} == {
        "status": "finished", "step": 2, "total_steps": 2, "loss": 5.5, "loss_step": 1, "updated": None}  # fmt: skip


def test_publish_copies_the_adapter_with_a_summary(tiny_llama_dir, tmp_path):
    cfg, model, tokenizer = _load(tiny_llama_dir, {"kind": "none", "compute_dtype": "float32"})
    model = cfg.adapter.build().apply(model)
    store = tmp_path / "store"
    exporter = load_config(
        {"export": {"kind": "publish", "target_dir": str(store), "name": "mine"}}
    ).export.build()
    result = exporter.export(model, tokenizer, tmp_path / "run", cfg)
    assert result.published_dir == store / "mine" and (store / "mine" / "adapter_model.safetensors").is_file()
    summary = json.loads((store / "mine" / "publish.json").read_text())
    assert summary["adapter"]["trainable_parameters"] == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    with pytest.raises(ExportError, match="already published"):
        exporter.export(model, tokenizer, tmp_path / "run", cfg)
