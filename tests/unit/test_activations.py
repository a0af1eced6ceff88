"""The spelled-out tanh GELU swapped for the fused one: the same values and gradients, undone on request."""

from __future__ import annotations

import pytest
import torch
from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

from qlora_kit.model.activations import FusedActivations
from qlora_kit.testing import make_distilgpt2_shape, make_tiny_llama


@pytest.mark.parametrize("spelled_out", [NewGELUActivation(), FastGELUActivation(), GELUTanh(True)])
def test_fused_gelu_is_the_same_function(spelled_out):
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64).requires_grad_()
    y = x.detach().clone().requires_grad_()
    expected, fused = spelled_out(x), GELUTanh()(y)
    torch.testing.assert_close(fused, expected, rtol=1e-6, atol=1e-7)
    expected.sum().backward()
    fused.sum().backward()
    torch.testing.assert_close(y.grad, x.grad, rtol=1e-5, atol=1e-6)


def test_gpt2_runs_the_fused_kernel_and_gets_its_own_back(tokenizer):
    model = make_distilgpt2_shape(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tokenizer))
    model.eval()  # GPT-2's dropout off: the same forward twice
    ids = torch.randint(1, len(tokenizer), (2, 12), generator=torch.Generator().manual_seed(0))
    originals = [layer.mlp.act for layer in model.transformer.h]
    before = model(input_ids=ids).logits
    fused = FusedActivations(model)
    assert fused.count == 2
    assert all(type(layer.mlp.act) is GELUTanh for layer in model.transformer.h)
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)
    fused.remove()
    assert [layer.mlp.act for layer in model.transformer.h] == originals


def test_models_without_the_spelled_out_gelu_are_left_alone(tokenizer):
    llama = make_tiny_llama(tokenizer=tokenizer)  # SiLU: already one kernel
    assert FusedActivations(llama).count == 0


def test_16_bit_norms_return_their_dtype_and_are_given_back():
    from qlora_kit.model.norms import NormsInModelDtype, _to_weight_dtype

    model = torch.nn.Sequential(
        torch.nn.LayerNorm(8).bfloat16(), torch.nn.LayerNorm(8), torch.nn.Linear(8, 8)
    )
    hooks = NormsInModelDtype(model)
    assert hooks.count == 1  # the float32 norm and the linear layer are left alone
    # what autocast makes of a 16-bit LayerNorm on CUDA: a float32 output, cast back to the weight's dtype
    assert _to_weight_dtype(model[0], (), torch.ones(2, 8)).dtype == torch.bfloat16
    assert _to_weight_dtype(model[0], (), torch.ones(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert model[0](torch.ones(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    hooks.remove()
    assert not model[0]._forward_hooks and hooks.count == 0


def test_lean_forward_hooks_norms_only_under_autocast(tokenizer):
    from qlora_kit.model.activations import lean_forward

    model = make_distilgpt2_shape(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tokenizer))
    model.to(torch.bfloat16)
    without = lean_forward(model, autocast=False)
    assert (without.activations.count, without.norms.count) == (2, 0)
    without.remove()
    lean = lean_forward(model, autocast=True)
    assert (lean.activations.count, lean.norms.count) == (2, 5)  # two layers' ln_1 and ln_2, and ln_f
    lean.remove()
    assert not any(m._forward_hooks for m in model.modules())
