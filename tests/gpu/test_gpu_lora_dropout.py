"""The light LoRA dropout on a CUDA device: the same gradients as dropout + linear with the same mask under
bf16 autocast, and the same numbers step after step through a checkpointed recompute (auto-skipped
without a GPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qlora_kit.config import ModelConfig
from qlora_kit.model import ModelLoader, lora_dropout, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.lora_dropout import LightDropoutLinear, _keep
from qlora_kit.model.quant import Bnb4bit

pytestmark = pytest.mark.gpu


def test_gradients_equal_dropout_then_linear_with_the_same_mask_on_cuda(gpu_device):
    torch.manual_seed(0)
    x = torch.randn(2, 64, 256, device=gpu_device, dtype=torch.bfloat16, requires_grad=True)
    layer = nn.Linear(256, 16, bias=False, device=gpu_device)
    layer.__class__ = LightDropoutLinear
    layer.dropout_p = 0.1
    grad_out = torch.randn(2, 64, 16, device=gpu_device, dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        torch.manual_seed(7)
        seed = int(torch.randint(0, 2**62, ()))
        torch.manual_seed(7)
        out = layer(x)
    out.backward(grad_out)
    light = out.detach(), x.grad.clone(), layer.weight.grad.clone()
    x.grad, layer.weight.grad = None, None
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = nn.functional.linear(x * _keep(x, 0.1, seed), layer.weight)
    ref.backward(grad_out)
    assert torch.equal(light[0], ref.detach())
    torch.testing.assert_close(light[1], x.grad)
    torch.testing.assert_close(light[2], layer.weight.grad)


def test_checkpointed_steps_repeat_exactly(tiny_llama_dir, gpu_device, monkeypatch):
    monkeypatch.setattr(lora_dropout, "LIGHT_MIN_HIDDEN", 0)  # the tiny model gets it too
    ids = torch.randint(0, 300, (4, 256), generator=torch.Generator().manual_seed(0)).to(gpu_device)

    def step(model):
        torch.manual_seed(3)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(gpu_device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad()
        return loss.item(), grads

    # eager attention: its backward has no atomics, so two runs of the same step are bit-identical
    config = ModelConfig(name_or_path=str(tiny_llama_dir), attn_implementation="eager")
    model, _ = ModelLoader(config, Bnb4bit.Config(), gpu_device).load()
    prepare_for_training(model, grad_checkpointing=True)
    light = AdapterBuilder(AdapterBuilder.Config(r=8, alpha=16, dropout=0.1)).apply(model).train()
    assert any(isinstance(m, LightDropoutLinear) for m in light.modules())
    (a, ga), (b, gb) = step(light), step(light)
    assert a == b and all(torch.equal(x, y) for x, y in zip(ga, gb, strict=True))


def test_hashed_masks_on_cuda_equal_the_cpu_s_compiled_or_not(gpu_device):
    """Inductor's int64 arithmetic in Triton wraps as eager CUDA and the CPU do: one seed, one mask."""
    from qlora_kit.model.lora_dropout import hashed_keep

    x = torch.ones(4, 1024, 4096, dtype=torch.bfloat16)  # 2**24 elements: the index products pass 32 bits
    seed = torch.tensor(0xDEADBEEF)
    cpu = hashed_keep(x, 0.05, seed)
    torch._dynamo.reset()
    compiled = torch.compile(hashed_keep)(x.to(gpu_device), 0.05, seed.to(gpu_device))
    assert torch.equal(hashed_keep(x.to(gpu_device), 0.05, seed.to(gpu_device)).cpu(), cpu)
    assert torch.equal(compiled.cpu(), cpu)
    assert (cpu == 0).float().mean().item() == pytest.approx(0.05, abs=0.001)


def test_compiled_light_dropout_matches_its_checkpointed_recompute(tiny_llama_dir, gpu_device, monkeypatch):
    """The compiled form (hashed masks, `LightDropoutLinear.in_compiled`) under inductor on CUDA, 4-bit base, bf16
    autocast: its kernels run (no graph break sends the LoRA forward to eager), a checkpointed run computes the
    loss and gradients of a plain compiled run, and the layers keep less than with PEFT's dropout."""
    from qlora_kit.compat import decoder_layers

    monkeypatch.setattr(lora_dropout, "LIGHT_MIN_HIDDEN", 0)
    ids = torch.randint(0, 300, (2, 128), generator=torch.Generator().manual_seed(0)).to(gpu_device)

    def run(checkpointing, in_compiled=True):
        monkeypatch.setattr(LightDropoutLinear, "in_compiled", in_compiled)
        torch._dynamo.reset()
        config = ModelConfig(name_or_path=str(tiny_llama_dir), attn_implementation="eager")
        model, _ = ModelLoader(config, Bnb4bit.Config(), gpu_device).load()
        prepare_for_training(model, grad_checkpointing=checkpointing)
        torch.manual_seed(1)  # the same adapter in both runs
        model = AdapterBuilder(AdapterBuilder.Config(r=8, alpha=16, dropout=0.1)).apply(model).train()
        for name, param in model.named_parameters():
            if "lora_B" in name:  # not zero, so the loss and lora_A's gradients depend on the masks
                param.data.normal_(0, 0.02)
        for layer in decoder_layers(model):
            layer.compile()
        torch.manual_seed(3)
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated(gpu_device)
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            kept = torch.cuda.memory_allocated(gpu_device) - start  # what the forward keeps for the backward
            loss.backward()
        # inductor names its kernels by the ops they fuse; eager would run "aten::bitwise_xor" instead
        hashed = any(e.key.startswith("triton") and "bitwise_xor" in e.key for e in prof.key_averages())
        grads = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
        return loss.item(), grads, kept, hashed

    (plain_loss, plain, kept, hashed), (ckpt_loss, ckpt, *_) = run(False), run(True)
    assert hashed  # the hash ran in compiled kernels (a graph break would have sent it to eager)
    assert plain_loss == pytest.approx(ckpt_loss, abs=1e-3)
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, rtol=2e-2, atol=1e-4, msg=name)
    _, _, kept_peft, _ = run(False, in_compiled=False)
    assert kept < kept_peft  # no masks or dropped copies kept
