"""Chunked and fused causal-LM losses: equal to the standard loss (value and every trainable gradient),
the head never sees more than a chunk, the head-split check, and the choice of loss.

Tolerances (fp32 models): loss rel 1e-5; gradients ``assert_close(rtol=1e-5, atol=1e-6)`` (measured
differences are ~1e-6 on gradients up to ~5: summation order only).
"""

from __future__ import annotations

import math
import random
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from qlora_kit.config import ModelConfig, TrainConfig
from qlora_kit.data.collate import PackedCollator, PaddedCollator
from qlora_kit.errors import ConfigError
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.quant import Bnb4bit
from qlora_kit.testing import make_distilgpt2_shape, make_tiny_llama, perturb_lora
from qlora_kit.training import Trainer
from qlora_kit.training.head_loss import (
    check_fused,
    chunked_causal_lm_loss,
    default_chunk_tokens,
    fused_causal_lm_loss,
    select_loss,
)
from qlora_kit.training.head_split import check_head_split, find_head
from qlora_kit.training.loss import IGNORE_INDEX, causal_lm_loss, count_supervised

CHUNK = 7  # splits every batch below unevenly


def _rows(n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(1, 300) for _ in range(rng.randint(6, 17))]
        prompt = rng.randint(1, 4)
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


def _base(arch: str, tokenizer, grad_checkpointing: bool = False):
    if arch == "llama":
        model = make_tiny_llama(tokenizer=tokenizer)
    else:  # tied head; GPT-2's own dropouts off so that train-mode passes are deterministic
        model = make_distilgpt2_shape(
            n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=len(tokenizer),
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
    return prepare_for_training(model, grad_checkpointing=grad_checkpointing)


_ATTENTION = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}
_ADAPTERS = {
    "lora": lambda arch: AdapterBuilder.Config(r=4, dropout=0.0, target_modules=_ATTENTION[arch]),
    "lora_on_head": lambda arch: AdapterBuilder.Config(
        r=4, dropout=0.0, target_modules=[*_ATTENTION[arch], "lm_head"]
    ),
    "head_to_save": lambda arch: AdapterBuilder.Config(
        r=4, dropout=0.0, target_modules=_ATTENTION[arch], modules_to_save=["lm_head"]
    ),
}


def _peft(arch: str, adapter: str, tokenizer, grad_checkpointing: bool = False):
    base = _base(arch, tokenizer, grad_checkpointing)
    torch.manual_seed(0)
    model = perturb_lora(AdapterBuilder(_ADAPTERS[adapter](arch)).apply(base))
    if adapter == "head_to_save":  # make the trainable copy differ from the frozen original
        with torch.no_grad():
            find_head(model).module.modules_to_save["default"].weight.mul_(1.5)
    return model.train()


def _loss_and_grads(model, loss_fn, batch):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _assert_same(model, batch, loss_fn, *, rtol=1e-5, atol=1e-6):
    expected, expected_grads = _loss_and_grads(model, causal_lm_loss, batch)
    got, grads = _loss_and_grads(model, loss_fn, batch)
    torch.testing.assert_close(got, expected, rtol=rtol, atol=0)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        assert expected_grads[name].abs().sum() > 0, f"{name}: the test would not see a wrong gradient"
        torch.testing.assert_close(grad, expected_grads[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed+grad_ckpt"])
@pytest.mark.parametrize("adapter", sorted(_ADAPTERS))
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_chunked_loss_and_gradients_equal_the_standard_loss(tokenizer, arch, adapter, packed):
    model = _peft(arch, adapter, tokenizer, grad_checkpointing=packed)
    batch = (PackedCollator() if packed else PaddedCollator(pad_token_id=0))(_rows(3))
    assert count_supervised(batch) % CHUNK != 0
    _assert_same(model, batch, lambda m, b: chunked_causal_lm_loss(m, b, chunk_tokens=CHUNK))


def test_head_only_sees_supervised_rows_one_chunk_at_a_time_and_recomputes_in_backward(tokenizer):
    model = _peft("llama", "lora_on_head", tokenizer)
    batch = PaddedCollator(pad_token_id=0)(_rows(4, seed=3))
    rows_seen: list[int] = []
    find_head(model).module.register_forward_hook(lambda m, args, out: rows_seen.append(args[0].shape[0]))
    loss = chunked_causal_lm_loss(model, batch, chunk_tokens=CHUNK)
    n = count_supervised(batch)
    assert n < batch["input_ids"].numel() - 8  # prompt and padding positions exist ...
    assert sum(rows_seen) == n and max(rows_seen) == CHUNK  # ... and never reach the head
    assert len(rows_seen) == math.ceil(n / CHUNK)
    loss.backward()
    assert len(rows_seen) == 2 * math.ceil(n / CHUNK) and max(rows_seen) == CHUNK  # recomputed, not kept
    rows_seen.clear()
    chunked_causal_lm_loss(model, batch, chunk_tokens=n).backward()
    assert rows_seen == [n]  # one chunk: nothing to gain from recomputing it


def test_batch_without_targets_gives_zero_and_zero_gradients(tokenizer):
    model = _peft("llama", "lora_on_head", tokenizer)
    batch = PaddedCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX] * 3}])
    loss = chunked_causal_lm_loss(model, batch, chunk_tokens=CHUNK)
    loss.backward()
    assert loss.item() == 0.0
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and not g.any() for g in grads)  # every trainable parameter is in the graph


def test_default_chunk_follows_the_memory_target():
    assert default_chunk_tokens(128_256) == 512
    assert default_chunk_tokens(50_257) == 1280
    assert default_chunk_tokens(32_000) == 2048
    assert default_chunk_tokens(2_000_000) == 64


def test_chunked_loss_runs_the_head_under_the_forwards_autocast(tokenizer):
    """accelerate puts autocast inside ``forward``: the chunks must run under it too, not in fp32."""
    model = _peft("llama", "lora", tokenizer)
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)  # what accelerate does
    dtypes: list[torch.dtype] = []
    find_head(model).module.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    batch = PackedCollator()(_rows(3))
    standard = causal_lm_loss(model, batch)
    chunked = chunked_causal_lm_loss(model, batch, chunk_tokens=CHUNK)
    assert set(dtypes) == {torch.bfloat16}
    torch.testing.assert_close(chunked, standard, rtol=2e-3, atol=0)


# ----------------------------------------------------------------------------- the head-split check


class _ScaledLlama(LlamaForCausalLM):
    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out


class _HeadAsFunctionLlama(LlamaForCausalLM):
    """Computes its logits from a weight instead of calling the head module."""

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weight = self.lm_head.weight if self.config.read_head_weight else self.model.embed_tokens.weight
        return types.SimpleNamespace(logits=F.linear(hidden, weight))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_check_head_split_passes_for_plain_and_peft_models(tokenizer, arch):
    assert check_head_split(_base(arch, tokenizer)) is None
    for adapter in _ADAPTERS:
        assert check_head_split(_peft(arch, adapter, tokenizer)) is None


_TINY = dict(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
_ARCHS = {  # class -> (config class, settings, what the forward does to the head's output: None = nothing)
    "Gemma2ForCausalLM": ("Gemma2Config", dict(num_key_value_heads=1, head_dim=16, final_logit_softcapping=30.0), -30),
    "Gemma3ForCausalLM": ("Gemma3TextConfig", dict(num_key_value_heads=1, head_dim=16, final_logit_softcapping=30.0), -30),
    "CohereForCausalLM": ("CohereConfig", dict(num_key_value_heads=1, logit_scale=0.0625), -62.5),
    "GraniteForCausalLM": ("GraniteConfig", dict(num_key_value_heads=1, logits_scaling=8.0), -125),
    "Qwen2ForCausalLM": ("Qwen2Config", dict(num_key_value_heads=1), None),
    "MistralForCausalLM": ("MistralConfig", dict(num_key_value_heads=1), None),
    "PhiForCausalLM": ("PhiConfig", dict(num_key_value_heads=1), None),
    "GPTNeoXForCausalLM": ("GPTNeoXConfig", {}, None),
}  # fmt: skip


@pytest.mark.parametrize("arch", sorted(_ARCHS))
def test_check_head_split_across_architectures(arch):
    import transformers

    config_name, settings, transformed = _ARCHS[arch]
    torch.manual_seed(0)
    model = getattr(transformers, arch)(getattr(transformers, config_name)(**_TINY, **settings))
    reason = check_head_split(model)
    if transformed is None:
        assert reason is None
    else:  # the probe logit -1000 comes out soft-capped or scaled, and the message says so
        assert (
            reason.startswith(f"{arch}'s forward transforms its head's output")
            and f"as {transformed}" in reason
        )


def test_a_transform_after_the_head_means_the_standard_loss(tokenizer):
    scaled = _ScaledLlama(make_tiny_llama(tokenizer=tokenizer).config)
    assert "transforms its head's output" in check_head_split(scaled)
    fn, kind, why = select_loss(scaled, "auto")
    assert (fn, kind) == (causal_lm_loss, "standard") and "as -500" in why
    with pytest.raises(ConfigError, match="train.loss: chunked: the output head cannot be split off"):
        select_loss(scaled, "chunked")


def test_check_head_split_names_a_head_the_forward_does_not_call(tokenizer):
    config = make_tiny_llama(tokenizer=tokenizer).config
    config.read_head_weight = False
    assert "does not call its output head 'lm_head'" in check_head_split(_HeadAsFunctionLlama(config))
    config.read_head_weight = True
    reason = check_head_split(_HeadAsFunctionLlama(config))
    assert "fails without its output head (AttributeError" in reason


def test_check_head_split_restores_train_mode(tokenizer):
    model = _peft("llama", "lora", tokenizer)
    check_head_split(model)
    assert model.training and find_head(model).module.training


# ------------------------------------------------------------------------------- choosing a loss


def test_select_loss_on_cpu(tokenizer):
    model = _peft("llama", "lora", tokenizer)
    assert select_loss(model, "auto", "cpu")[:2] == (chunked_causal_lm_loss, "chunked")
    assert "CUDA" in select_loss(model, "auto", "cpu")[2]
    assert select_loss(model, "chunked") == (chunked_causal_lm_loss, "chunked", None)
    assert select_loss(model, "standard") == (causal_lm_loss, "standard", None)
    with pytest.raises(ConfigError, match="train.loss: fused: it needs a CUDA device"):
        select_loss(model, "fused", "cpu")
    with pytest.raises(ConfigError, match="train.loss: unknown loss 'fast'"):
        select_loss(model, "fast")


def test_fused_needs_a_plain_linear_head(tokenizer):
    assert "has LoRA on it" in check_fused(_peft("llama", "lora_on_head", tokenizer), "cuda")
    assert "CUDA" in check_fused(_peft("llama", "head_to_save", tokenizer), "cuda")  # a plain copy: fine


def test_missing_liger_kernel_is_a_clear_reason(monkeypatch):
    from qlora_kit.training.liger import liger

    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # importing it now fails as if not installed
    assert liger() == "liger_kernel is not installed (`pip install liger-kernel`)"


def test_liger_is_found_at_selection_and_imported_only_for_a_pass_that_needs_it(tokenizer, monkeypatch):
    import importlib.util

    from qlora_kit.training import head_loss, liger

    found = {"liger_kernel": object(), "triton": None}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: found[name])
    assert (
        liger.liger_findable() == "liger_kernel cannot be imported: it needs 'triton', which is not installed"
    )
    found["liger_kernel"] = None
    assert liger.liger_findable() == "liger_kernel is not installed (`pip install liger-kernel`)"
    monkeypatch.setattr(head_loss, "liger", lambda: pytest.fail("imported for a pass the plain head takes"))
    model = _peft("llama", "lora", tokenizer)
    _assert_same(model, PackedCollator()(_rows(3)), fused_causal_lm_loss)


@pytest.fixture
def stub_liger(monkeypatch):
    """A pure-PyTorch stand-in for liger_kernel's functional API, to test the plumbing on the CPU."""

    def liger_fused_linear_cross_entropy(
        input, weight, target, bias=None, ignore_index=-100, reduction="mean"
    ):
        calls.append(input.shape)
        logits = F.linear(input, weight, bias).float()
        return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)

    calls: list[torch.Size] = []
    functional = types.ModuleType("liger_kernel.transformers.functional")
    functional.liger_fused_linear_cross_entropy = liger_fused_linear_cross_entropy
    for name, module in [("liger_kernel", types.ModuleType("liger_kernel")),
                         ("liger_kernel.transformers", types.ModuleType("liger_kernel.transformers")),
                         ("liger_kernel.transformers.functional", functional)]:  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)
    return calls


@pytest.mark.parametrize("adapter", ["lora", "head_to_save"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fused_loss_plumbing_with_a_stub_kernel(tokenizer, stub_liger, arch, adapter):
    model = _peft(arch, adapter, tokenizer)
    batch = PackedCollator()(_rows(3))
    _assert_same(model, batch, lambda m, b: fused_causal_lm_loss(m, b, kernel_min_rows=0))
    assert stub_liger == [torch.Size([count_supervised(batch), 64])]  # only the supervised rows


def test_the_fused_loss_takes_the_plain_head_for_a_pass_of_few_rows(tokenizer, stub_liger):
    """Fewer supervised rows than one default chunk: the same loss and gradients without the kernel."""
    model = _peft("llama", "lora", tokenizer)
    batch = PackedCollator()(_rows(3))
    _assert_same(model, batch, fused_causal_lm_loss)
    assert stub_liger == []
    fused_causal_lm_loss(model, batch, kernel_min_rows=count_supervised(batch))  # not fewer: the kernel
    assert len(stub_liger) == 1


@pytest.mark.parametrize("bias", [False, True])
def test_the_aligned_plain_head_gives_the_same_loss_and_gradients(bias):
    """The plain head with its weight padded to 64 rows (GPT-2's 50,257-token vocabulary runs cuBLAS's slow
    unaligned kernels on CUDA): the padded logits never reach the loss, so nothing changes but speed."""
    from qlora_kit.training.head_loss import aligned_linear_loss

    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 101, bias=bias)  # 101 = 64 + 37: 27 padded rows
    hidden = torch.randn(9, 16, requires_grad=True)
    targets = torch.tensor([0, 5, 100, 64, 63, 7, 99, 1, 2])
    results = []
    for align in (False, True):
        linear.zero_grad()
        hidden.grad = None
        loss = aligned_linear_loss(linear, hidden, targets, align=align)
        loss.backward()
        grads = [hidden.grad.clone(), linear.weight.grad.clone()] + (
            [linear.bias.grad.clone()] if bias else []
        )
        results.append((loss.detach(), grads))
    (plain, plain_grads), (aligned, aligned_grads) = results
    torch.testing.assert_close(aligned, plain, rtol=1e-6, atol=0)
    for got, expected in zip(aligned_grads, plain_grads, strict=True):
        assert got.shape == expected.shape and expected.abs().sum() > 0
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


# -------------------------------------------------------------------- 4-bit base, and the Trainer


def test_chunked_loss_on_a_4bit_base(tiny_llama_dir):
    loader = ModelLoader(
        ModelConfig(name_or_path=str(tiny_llama_dir)), Bnb4bit.Config(compute_dtype="bfloat16"), "cpu"
    )
    base = prepare_for_training(loader.load_model(), grad_checkpointing=True)
    torch.manual_seed(0)
    cfg = AdapterBuilder.Config(r=4, dropout=0.0, target_modules="all-linear", modules_to_save=["lm_head"])
    model = perturb_lora(AdapterBuilder(cfg).apply(base)).train()
    assert check_head_split(model) is None
    batch = PaddedCollator(pad_token_id=0)(_rows(3))
    # bf16 activations: the head's matmul on gathered rows rounds differently from the full one
    expected, expected_grads = _loss_and_grads(model, causal_lm_loss, batch)
    got, grads = _loss_and_grads(model, lambda m, b: chunked_causal_lm_loss(m, b, chunk_tokens=CHUNK), batch)
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=0)
    for name, grad in grads.items():
        ref = expected_grads[name].float()
        cosine = F.cosine_similarity(grad.float().flatten(), ref.flatten(), dim=0)
        assert cosine > 0.999 and (grad.float() - ref).norm() <= 0.03 * ref.norm(), name


def test_trainer_with_the_chunked_loss_matches_the_standard_loss(tokenizer, tmp_path):
    rows = _rows(8, seed=5)
    cfg = TrainConfig(micro_batch_size=2, grad_accum=2, max_steps=3, log_every=1,
                      optimizer={"kind": "adamw_torch", "lr": 1e-2}, mixed_precision="no")  # fmt: skip
    losses = {}
    for name, loss_fn in [("standard", causal_lm_loss), ("chunked", chunked_causal_lm_loss)]:
        model = _peft("llama", "lora_on_head", tokenizer, grad_checkpointing=True)
        result = Trainer(cfg, output_dir=tmp_path / name, loss_fn=loss_fn).fit(model, rows, rows[:4])
        losses[name] = [r["loss"] for r in result.history if "loss" in r] + [result.eval_loss]
    assert len(losses["chunked"]) == 4
    torch.testing.assert_close(losses["chunked"], losses["standard"], rtol=1e-4, atol=0)


def test_under_fsdp_auto_takes_the_standard_loss_and_fused_is_refused(tokenizer, monkeypatch):
    # FSDP2 turns the head into an FSDPLinear with a sharded weight: the fused kernel failed on it on two H200s
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    model = _base("llama", tokenizer)
    fn, kind, why = select_loss(model, "auto")
    assert (fn, kind) == (causal_lm_loss, "standard") and "FSDP" in why
    assert "FSDP" in check_fused(model)
    with pytest.raises(ConfigError, match="train.loss.*FSDP"):
        select_loss(model, "fused")
