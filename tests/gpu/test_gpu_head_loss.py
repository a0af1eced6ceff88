"""Chunked and fused losses on CUDA in bf16: same loss and gradients as the standard loss, less memory.

Tolerances (bf16 autocast, 4-bit base): loss rel 1e-2; each trainable gradient cosine > 0.999 and
relative L2 difference < 3%. The fused test needs liger_kernel (skipped without it).
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from qlora_kit.config import ModelConfig, TrainConfig
from qlora_kit.data.collate import PackedCollator, PaddedCollator
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.quant import Bnb4bit
from qlora_kit.testing import make_tiny_llama, perturb_lora
from qlora_kit.training import Trainer
from qlora_kit.training.head_loss import chunked_causal_lm_loss, fused_causal_lm_loss, select_loss
from qlora_kit.training.loss import IGNORE_INDEX, causal_lm_loss

pytestmark = pytest.mark.gpu


def _rows(n, seed=0, length=(8, 40)):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(1, 300) for _ in range(rng.randint(*length))]
        prompt = rng.randint(1, 6)
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


def _qlora(model_dir, device, modules_to_save=()):
    loader = ModelLoader(
        ModelConfig(name_or_path=str(model_dir)), Bnb4bit.Config(compute_dtype="bfloat16"), device
    )
    base = prepare_for_training(loader.load_model(), grad_checkpointing=True)
    torch.manual_seed(0)
    cfg = AdapterBuilder.Config(r=8, dropout=0.0, modules_to_save=list(modules_to_save))
    return perturb_lora(AdapterBuilder(cfg).apply(base)).train()


def _loss_and_grads(model, loss_fn, batch):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = loss_fn(model, batch)
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach().float(), grads


def _assert_close_bf16(model, batch, loss_fn):
    expected, expected_grads = _loss_and_grads(model, causal_lm_loss, batch)
    got, grads = _loss_and_grads(model, loss_fn, batch)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=0)
    for name, grad in grads.items():
        ref = expected_grads[name]
        cosine = F.cosine_similarity(grad.flatten(), ref.flatten(), dim=0)
        assert cosine > 0.999 and (grad - ref).norm() <= 0.03 * ref.norm(), name


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_chunked_matches_standard_in_bf16(tiny_llama_dir, gpu_device, packed):
    model = _qlora(tiny_llama_dir, gpu_device, modules_to_save=["lm_head"])
    batch = (PackedCollator() if packed else PaddedCollator(pad_token_id=0))(_rows(4))
    batch = {k: v.to(gpu_device) for k, v in batch.items()}
    _assert_close_bf16(model, batch, lambda m, b: chunked_causal_lm_loss(m, b, chunk_tokens=13))


@pytest.mark.parametrize("kernel_min_rows", [0, None], ids=["kernel", "few_rows_plain_head"])
@pytest.mark.parametrize("modules_to_save", [(), ("lm_head",)], ids=["frozen_head", "trained_head"])
def test_fused_matches_standard_in_bf16(tiny_llama_dir, gpu_device, modules_to_save, kernel_min_rows):
    """Liger's kernel (forced with kernel_min_rows=0), and the plain head the default takes for a pass
    this small, both match the standard loss."""
    pytest.importorskip("liger_kernel")
    model = _qlora(tiny_llama_dir, gpu_device, modules_to_save)
    assert select_loss(model, "auto", gpu_device)[:2] == (fused_causal_lm_loss, "fused")
    batch = {k: v.to(gpu_device) for k, v in PackedCollator()(_rows(4)).items()}
    _assert_close_bf16(model, batch, lambda m, b: fused_causal_lm_loss(m, b, kernel_min_rows=kernel_min_rows))


def test_auto_without_liger_is_chunked_and_says_why(tiny_llama_dir, gpu_device):
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        fn, kind, reason = select_loss(_qlora(tiny_llama_dir, gpu_device), "auto", gpu_device)
        assert (fn, kind) == (chunked_causal_lm_loss, "chunked") and "liger_kernel" in reason
    else:
        pytest.skip("liger_kernel is installed")


def test_trainer_with_chunked_loss_under_accelerate_autocast(tiny_llama_dir, tmp_path, gpu_device):
    """accelerate wraps forward in bf16 autocast: the chunked loss must give the standard loss's curve."""
    rows = _rows(8, seed=3)
    cfg = TrainConfig(micro_batch_size=2, grad_accum=2, max_steps=4, log_every=1, mixed_precision="auto",
                      optimizer={"kind": "paged_adamw_8bit", "lr": 1e-2})  # fmt: skip
    curves = {}
    for name, loss_fn in [("standard", causal_lm_loss), ("chunked", chunked_causal_lm_loss)]:
        model = _qlora(tiny_llama_dir, gpu_device)
        result = Trainer(cfg, output_dir=tmp_path / name, loss_fn=loss_fn).fit(model, rows)
        curves[name] = [r["loss"] for r in result.history if "loss" in r]
    torch.testing.assert_close(curves["chunked"], curves["standard"], rtol=2e-2, atol=0)


@pytest.mark.parametrize("loss", ["chunked", "fused"])
def test_peak_memory_is_below_the_standard_loss(gpu_device, loss):
    """Vocab 32,000, 4,096 supervised tokens: the standard loss holds ~0.5 GB of logits (bf16 + fp32 +
    gradients); a 512-row chunk holds 1/8 of that. The fused loss is forced to its kernel: by default a pass
    this small takes the plain head (its fp32 logits are under PLAIN_HEAD_LOGITS_BYTES)."""
    if loss == "fused":
        pytest.importorskip("liger_kernel")
    fn = (
        (lambda m, b: fused_causal_lm_loss(m, b, kernel_min_rows=0))
        if loss == "fused"
        else (lambda m, b: chunked_causal_lm_loss(m, b, chunk_tokens=512))
    )
    model = make_tiny_llama(vocab_size=32_000, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096)  # fmt: skip
    model = model.to(gpu_device, torch.bfloat16)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("model.layers"))  # the head frozen, as in QLoRA
    ids = torch.randint(1, 32_000, (1, 4096), device=gpu_device)
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    peaks = {}
    for name, loss_fn in [("standard", causal_lm_loss), (loss, fn)]:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        start = torch.cuda.memory_allocated(gpu_device)
        torch.cuda.reset_peak_memory_stats(gpu_device)
        loss_fn(model, batch).backward()
        model.zero_grad(set_to_none=True)
        peaks[name] = torch.cuda.max_memory_allocated(gpu_device) - start
    assert peaks[loss] < 0.5 * peaks["standard"], peaks
