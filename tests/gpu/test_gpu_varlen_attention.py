"""``sdpa_varlen`` on CUDA: packed passes through flash attention's variable-length kernel give SDPA's loss and
gradients (block-diagonal mask) within bf16 tolerance; its dropout is unbiased and replayed exactly in the
backward pass; and a CLI run on CUDA uses it by default, recorded as CUDA graphs or not.

Tolerances (bf16, two different attention kernels): loss rel 1e-2; each trainable gradient cosine > 0.999
and relative L2 difference < 3%, as in test_gpu_head_loss.py."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

from qlora_kit.cli import main
from qlora_kit.compat import attn_implementation
from qlora_kit.config import ModelConfig
from qlora_kit.data.collate import PackedCollator
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model import varlen_attention as va
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.quant import Bnb4bit
from qlora_kit.testing import perturb_lora
from qlora_kit.training.loss import IGNORE_INDEX, causal_lm_loss

pytestmark = pytest.mark.gpu


def _rows(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(1, 300) for _ in range(rng.randint(8, 40))]
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * 3 + ids[3:]})
    return rows


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = causal_lm_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach().float(), grads


def test_packed_passes_match_sdpa_with_its_mask(tiny_llama_dir, gpu_device, monkeypatch):
    """The tiny Llama has grouped-query attention (4 query heads, 2 key/value heads): the kernel's own."""
    loader = ModelLoader(ModelConfig(name_or_path=str(tiny_llama_dir)), Bnb4bit.Config(), gpu_device)
    model = loader.load_model()
    assert attn_implementation(model) == "sdpa_varlen"  # adopted by default on CUDA in bf16
    model = prepare_for_training(model, grad_checkpointing=False)
    torch.manual_seed(0)
    model = perturb_lora(AdapterBuilder(AdapterBuilder.Config(r=8, dropout=0.0)).apply(model)).train()
    calls = []
    apply = va._VarlenFlash.apply
    monkeypatch.setattr(va._VarlenFlash, "apply", lambda *a: calls.append(1) or apply(*a))
    packed = PackedCollator(varlen_kwargs=True, widths=(256,))(_rows(6))
    batch = {k: v.to(gpu_device) if torch.is_tensor(v) else v for k, v in packed.items()}
    loss, grads = _grads(model, batch)
    assert len(calls) == 2  # one per layer: the variable-length kernel ran
    expected, expected_grads = _grads(model, {k: batch[k] for k in ("input_ids", "labels", "position_ids")})
    assert len(calls) == 2  # without the lengths: SDPA with transformers' block-diagonal mask
    assert loss.item() == pytest.approx(expected.item(), rel=1e-2)
    for name, grad in grads.items():
        want = expected_grads[name]
        assert F.cosine_similarity(grad.flatten(), want.flatten(), dim=0) > 0.999, name
        assert (grad - want).norm() / want.norm() < 3e-2, name


def test_float32_queries_under_autocast_take_the_kernel_in_its_dtype(gpu_device, monkeypatch):
    """GPT-2's residual stream is float32: under bf16 autocast SDPA would compute in bf16, and so does this;
    without autocast, float32 goes to SDPA."""
    calls = []
    apply = va._VarlenFlash.apply
    monkeypatch.setattr(va._VarlenFlash, "apply", lambda *a: calls.append(1) or apply(*a))
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 64, 64, device=gpu_device) for _ in range(3))
    cu = va.cumulative_lengths([24, 40]).to(gpu_device)
    kwargs = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=64, max_length_k=64)
    module = torch.nn.Module()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        autocast, _ = va.varlen_attention_forward(module, q, k, v, None, **kwargs)
    assert len(calls) == 1 and autocast.dtype == torch.bfloat16
    bf16, _ = va.varlen_attention_forward(module, *(t.bfloat16() for t in (q, k, v)), None, **kwargs)
    assert torch.equal(autocast, bf16)
    mask = torch.zeros(64, 64, dtype=torch.bool, device=gpu_device)
    mask[:24, :24] = mask[24:, 24:] = True
    mask = mask.tril()[None, None]
    fp32, _ = va.varlen_attention_forward(module, q, k, v, mask, **kwargs)
    assert len(calls) == 2 and fp32.dtype == torch.float32  # the bf16 call's; float32 went to SDPA
    assert (fp32 - bf16.float()).abs().max() < 3e-2


def test_dropout_is_unbiased_and_its_backward_replays_the_forwards_mask(gpu_device):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 96, 64, device=gpu_device, dtype=torch.bfloat16) for _ in range(3))
    cu = va.cumulative_lengths([40, 56]).to(gpu_device)
    kwargs = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=96, max_length_k=96)
    module = torch.nn.Module()
    exact, _ = va.varlen_attention_forward(module, q, k, v, None, dropout=0.0, **kwargs)
    draws = torch.stack([va.varlen_attention_forward(module, q, k, v, None, dropout=0.3, **kwargs)[0]
                         for _ in range(400)]).float()  # fmt: skip
    assert not torch.equal(draws[0], draws[1])
    error = (draws.mean(0) - exact.float()).norm() / exact.float().norm()
    assert error < 0.05  # a dropped-out average converges on the exact output (~1/sqrt(400) noise)

    def grads(seed):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        torch.manual_seed(seed)
        out, _ = va.varlen_attention_forward(module, *leaves, None, dropout=0.3, **kwargs)
        (out.float() * exact.float()).sum().backward()
        return [t.grad for t in leaves]

    def differ(a, b):  # the backward accumulates in float32 atomics: equal to rounding, not to the bit
        return max(((x - y).float().norm() / y.float().norm()).item() for x, y in zip(a, b, strict=True))

    assert differ(grads(1), grads(1)) < 1e-2  # the same seed: the same mask in forward and backward
    assert differ(grads(1), grads(2)) > 0.1


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "cuda-graphs"])
def test_cli_run_on_cuda_uses_it_with_the_losses_of_sdpa(
    tiny_run_config, tmp_path, capsys, gpu_device, graphs
):
    cfg = tiny_run_config(max_steps=4, micro_batch_size=4, grad_accum=1, log_every=1)
    common = [str(cfg), "quant.compute_dtype=bfloat16", "adapter.dropout=0", "data.packing=true",
              f"train.cuda_graphs={str(graphs).lower()}"]  # fmt: skip
    assert main(["train", *common, "-v"]) == 0
    assert "attention: sdpa_varlen" in capsys.readouterr().err
    plain = tmp_path / "plain"
    assert main(["train", *common, "model.attn_implementation=sdpa", f"output_dir={plain}", "-v"]) == 0
    assert "attention: sdpa_varlen" not in capsys.readouterr().err

    def losses(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["loss"] for x in lines if '"loss"' in x]

    assert losses(tmp_path / "run") == pytest.approx(losses(plain), rel=2e-2)
