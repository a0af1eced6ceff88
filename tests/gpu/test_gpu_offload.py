"""Activation offloading on a CUDA device: 4-bit base, bf16 autocast, side-stream copies."""

from __future__ import annotations

import pytest
import torch

from qlora_kit.config import ModelConfig
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.quant import Bnb4bit
from qlora_kit.testing import make_tiny_llama
from qlora_kit.training.offload import disable_offloaded_checkpointing, enable_offloaded_checkpointing

pytestmark = pytest.mark.gpu


def _qlora(path, device, dropout: float):
    # eager attention: its backward has no atomics, so two runs of the same step are bit-identical
    loader = ModelLoader(
        ModelConfig(name_or_path=str(path), attn_implementation="eager"), Bnb4bit.Config(), device
    )
    model, _ = loader.load()
    prepare_for_training(model, grad_checkpointing=True)
    model = AdapterBuilder(AdapterBuilder.Config(r=8, alpha=16, dropout=dropout)).apply(model)
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.02)
    return model.train()


def _step(model, ids):
    torch.manual_seed(3)  # dropout masks
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return loss.detach(), grads


def test_offloaded_step_equals_plain_checkpointing(tiny_llama_dir, gpu_device):
    model = _qlora(tiny_llama_dir, gpu_device, dropout=0.1)
    ids = torch.randint(0, 300, (4, 256), generator=torch.Generator().manual_seed(0)).to(gpu_device)
    loss_plain, grads_plain = _step(model, ids)
    handle = enable_offloaded_checkpointing(model, min_bytes=0, chunk_bytes=1 << 16)  # several chunks each
    for _ in range(3):  # later steps reuse pinned and device blocks: still the same numbers
        loss_off, grads_off = _step(model, ids)
        assert torch.equal(loss_off, loss_plain)
        assert all(torch.equal(grads_off[n], g) for n, g in grads_plain.items())
    # both layers' inputs move, every step (no input grads: layer 0's input is no leaf autograd holds)
    assert handle.offloader.offloaded == 2 * 3
    assert handle.offloader.pending_bytes() == 0


def test_offload_lowers_peak_memory_for_a_long_sequence(tmp_path, tokenizer, gpu_device):
    layers, hidden, tokens = 8, 1024, 16384
    make_tiny_llama(
        tmp_path, tokenizer, hidden_size=hidden, intermediate_size=2816, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=tokens,
    )  # fmt: skip
    loader = ModelLoader(ModelConfig(name_or_path=str(tmp_path)), Bnb4bit.Config(), gpu_device)
    model, _ = loader.load()
    prepare_for_training(model, grad_checkpointing=True)
    model = AdapterBuilder(AdapterBuilder.Config(r=16, dropout=0.0)).apply(model).train()
    model.get_base_model().disable_input_require_grads()  # else the first layer's input stays (a leaf)
    ids = torch.randint(0, 300, (1, tokens), device=gpu_device)

    def peak() -> int:
        _step(model, ids)  # warm-up (allocator, pinned-memory cache)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(gpu_device)
        _step(model, ids)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(gpu_device)

    plain = peak()
    enable_offloaded_checkpointing(model)
    offloaded = peak()
    disable_offloaded_checkpointing(model)
    per_layer = tokens * hidden * 2  # one bf16 layer input
    print(
        f"peak plain {plain / 2**20:.0f} MiB, offloaded {offloaded / 2**20:.0f} MiB, layer input {per_layer / 2**20:.0f} MiB"
    )
    # all but ~2 inputs (the one in use and the one prefetched) leave the device
    assert plain - offloaded >= (layers - 3) * per_layer


def test_trainer_offloads_the_fewest_layers_a_budget_needs(tmp_path, tokenizer, gpu_device, caplog):
    import logging

    from qlora_kit.config.io import load_config
    from qlora_kit.data.collate import PaddedCollator
    from qlora_kit.planning import Settings, plan_run
    from qlora_kit.training import Trainer

    layers, tokens = 8, 8192
    make_tiny_llama(
        tmp_path / "model", tokenizer, hidden_size=1024, intermediate_size=2816, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=tokens,
    )  # fmt: skip
    raw = {"model": {"name_or_path": str(tmp_path / "model")}, "data": {"max_length": tokens},
           "adapter": {"dropout": 0.0}, "train": {"micro_batch_size": 1, "max_steps": 2, "loss": "chunked"}}  # fmt: skip
    cfg = load_config(raw)
    half = plan_run(cfg, settings=Settings(True, True, "chunked", offload_layers=layers // 2))
    budget = half.memory.needed / 0.9 / 2**30 + 0.004  # fits 4 of 8 offloaded, with the 10% margin
    cfg = load_config({**raw, "train": {**raw["train"], "memory_budget_gib": budget}})
    model, _ = ModelLoader(cfg.model, cfg.quant, gpu_device).load()
    prepare_for_training(model, grad_checkpointing="auto")
    model = AdapterBuilder(cfg.adapter).apply(model).train()
    ids = torch.randint(0, 300, (tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    with caplog.at_level(logging.INFO, logger="qlora_kit.training.session"):
        result = Trainer(cfg.train, output_dir=tmp_path / "run", collate_fn=PaddedCollator(0)).fit(
            model, [{"input_ids": ids, "labels": ids}] * 2
        )
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("memory:"))
    print(line)
    assert "checkpointing on, activation offload on for the first" in line
    offloaded = int(line.split("for the first ")[1].split()[0])
    assert 0 < offloaded < layers
    assert result.steps == 2
