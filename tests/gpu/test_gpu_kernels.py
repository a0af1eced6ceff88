"""Long plain rows train with cuDNN attention, forward and checkpointed recompute alike, and the numbers
match the flash kernel's (auto-skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from qlora_kit.config import ModelConfig
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.quant import Bnb4bit
from qlora_kit.testing import make_tiny_llama
from qlora_kit.training.kernels import (
    LONG_ROW_TOKENS,
    attention_backends,
    is_long_plain_row,
    long_row_attention,
)

pytestmark = pytest.mark.gpu


def _step(model, ids, device, long_plain: bool):
    backends = attention_backends(device), long_row_attention(device, long_plain)
    with backends[0], backends[1], profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    model.zero_grad()
    ops = [e.key for e in prof.key_averages()]
    return loss.item(), grads, ops


def test_long_plain_row_uses_cudnn_attention_with_flash_numbers(tmp_path, tokenizer, gpu_device):
    make_tiny_llama(
        tmp_path, tokenizer, hidden_size=512, intermediate_size=1024, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=LONG_ROW_TOKENS,
    )  # fmt: skip
    model, _ = ModelLoader(ModelConfig(name_or_path=str(tmp_path)), Bnb4bit.Config(), gpu_device).load()
    prepare_for_training(model, grad_checkpointing=True)  # the recompute must pick cuDNN too
    model = AdapterBuilder(AdapterBuilder.Config(r=8, dropout=0.0)).apply(model).train()
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.02)
    ids = torch.randint(0, 300, (1, LONG_ROW_TOKENS), generator=torch.Generator().manual_seed(0))
    assert is_long_plain_row({"input_ids": ids})
    ids = ids.to(gpu_device)

    flash_loss, flash_grads, flash_ops = _step(model, ids, gpu_device, long_plain=False)
    cudnn_loss, cudnn_grads, cudnn_ops = _step(model, ids, gpu_device, long_plain=True)

    def calls(ops, name):
        return [op for op in ops if name in op]

    assert calls(cudnn_ops, "_scaled_dot_product_cudnn_attention") and not calls(cudnn_ops, "flash_attention")
    assert calls(flash_ops, "_scaled_dot_product_flash_attention") and not calls(flash_ops, "cudnn_attention")
    assert calls(cudnn_ops, "_scaled_dot_product_cudnn_attention_backward")
    assert cudnn_loss == pytest.approx(flash_loss, rel=1e-3)
    cosine = torch.nn.functional.cosine_similarity(cudnn_grads.float(), flash_grads.float(), dim=0)
    assert cosine > 0.999
