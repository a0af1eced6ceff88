"""Light LoRA dropout: PEFT's numbers for the same mask, no dropped copies kept, reproducible, recompute-safe."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from qlora_kit.compat import decoder_layers
from qlora_kit.model import lora_dropout
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.lora_dropout import (
    LightDropoutLinear,
    _compiled_dropped_linear,
    _keep,
    hashed_keep,
    use_light_dropout,
)
from qlora_kit.testing import lora_step, make_tiny_llama

NEEDS_CXX = pytest.mark.skipif(shutil.which("g++") is None, reason="inductor's CPU code needs a C++ compiler")


@pytest.fixture(autouse=True)
def light_on_the_cpu(monkeypatch):
    # CUDA only in use (the CPU pays more for the second mask than the memory is worth); the arithmetic is
    # the same on every device, so these tests run it on the CPU
    monkeypatch.setattr(LightDropoutLinear, "devices", ("cuda", "cpu"))
    monkeypatch.setattr(lora_dropout, "LIGHT_MIN_HIDDEN", 0)  # and on a tiny model


def _lora(tokenizer, dropout: float, light: bool = True, checkpointing: bool = False):
    model = make_tiny_llama(tokenizer=tokenizer, num_hidden_layers=2)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    cfg = AdapterBuilder.Config(r=4, alpha=8, dropout=dropout)
    if light:
        model = AdapterBuilder(cfg).apply(model)
    else:
        from peft import get_peft_model

        model = get_peft_model(model, AdapterBuilder(cfg).lora_config(model))
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.02)
    return model.train()


def _step(model, seed: int = 3):
    return lora_step(model, ids_seed=0, dropout_seed=seed)


def test_every_lora_a_gets_the_dropout_inside(tokenizer):
    model = _lora(tokenizer, dropout=0.1)
    lora_as = [m for n, m in model.named_modules() if n.endswith("lora_A.default")]
    assert lora_as and all(type(m) is LightDropoutLinear and m.dropout_p == 0.1 for m in lora_as)
    assert all(type(m) is nn.Identity for n, m in model.named_modules() if n.endswith("lora_dropout.default"))
    assert use_light_dropout(model) == 0  # nothing left to change
    assert use_light_dropout(_lora(tokenizer, dropout=0.0, light=False)) == 0  # no dropout: nothing to move


@pytest.mark.parametrize("autocast", [False, True])
def test_gradients_equal_dropout_then_linear_with_the_same_mask(autocast):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, requires_grad=True)
    layer = nn.Linear(16, 4, bias=False)
    layer.__class__ = LightDropoutLinear
    layer.dropout_p = 0.3
    grad_out = torch.randn(3, 5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        torch.manual_seed(7)
        seed = int(torch.randint(0, 2**62, ()))  # the seed the layer will draw
        torch.manual_seed(7)
        out = layer(x)
    out.backward(grad_out.to(out.dtype))
    light = out.detach(), x.grad.clone(), layer.weight.grad.clone()
    x.grad, layer.weight.grad = None, None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ref = nn.functional.linear(x * _keep(x, 0.3, seed), layer.weight)  # what nn.Dropout + Linear computes
    ref.backward(grad_out.to(ref.dtype))
    assert (_keep(x, 0.3, seed) == 0).float().mean().item() == pytest.approx(0.3, abs=0.1)
    assert torch.equal(light[0], ref.detach())
    assert torch.equal(light[1], x.grad) and torch.equal(light[2], layer.weight.grad)
    assert light[2].dtype == torch.float32  # the fp32 adapter weight gets an fp32 gradient


def saved_bytes(model) -> int:
    """Bytes of the activations the forward keeps: parameters (and views of them) are not counted."""
    total, seen = 0, set()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype, t.shape)
        if key[0] not in params and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    torch.manual_seed(0)
    ids = torch.randint(0, 300, (2, 24))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss.sum()  # saved tensors are what the forward keeps
    return total


def test_dropped_inputs_are_not_kept_for_backward(tokenizer):
    none = saved_bytes(_lora(tokenizer, dropout=0.0))
    light = saved_bytes(_lora(tokenizer, dropout=0.1))
    peft = saved_bytes(_lora(tokenizer, dropout=0.1, light=False))
    assert light == none < peft  # as with dropout 0: each input once, no masks, no dropped copies


def test_same_seed_same_numbers_and_dropout_is_active(tokenizer):
    model = _lora(tokenizer, dropout=0.2)
    (a, ga), (b, gb), (c, _) = _step(model, seed=3), _step(model, seed=3), _step(model, seed=4)
    assert torch.equal(a, b) and all(torch.equal(ga[n], gb[n]) for n in ga)
    assert not torch.equal(a, c)
    model.eval()
    with torch.no_grad():
        ids = torch.randint(0, 300, (1, 8))
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)  # no dropout in eval


def test_checkpointed_recompute_draws_the_same_masks(tokenizer):
    plain_loss, plain = _step(_lora(tokenizer, dropout=0.2))
    ckpt_loss, ckpt = _step(_lora(tokenizer, dropout=0.2, checkpointing=True))
    assert torch.equal(plain_loss, ckpt_loss)
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, rtol=0, atol=1e-7, msg=name)


def test_the_cpu_runs_peft_s_path_by_default(tokenizer, monkeypatch):
    monkeypatch.setattr(LightDropoutLinear, "devices", ("cuda",))
    light_loss, light = _step(_lora(tokenizer, dropout=0.2))
    peft_loss, peft = _step(_lora(tokenizer, dropout=0.2, light=False))
    assert torch.equal(light_loss, peft_loss)  # F.dropout draws the same masks as nn.Dropout
    assert all(torch.equal(light[n], peft[n]) for n in peft)


def test_narrow_models_keep_peft_s_dropout(tokenizer, monkeypatch):
    monkeypatch.setattr(lora_dropout, "LIGHT_MIN_HIDDEN", 2048)
    model = _lora(tokenizer, dropout=0.1)  # hidden 64
    assert not any(isinstance(m, LightDropoutLinear) for m in model.modules())
    assert use_light_dropout(model, min_hidden=64) == 2 * 7  # every adapted linear of the 2 layers


def test_adapter_light_dropout_false_keeps_peft_s_modules(tokenizer):
    model = make_tiny_llama(tokenizer=tokenizer, num_hidden_layers=2)
    model = AdapterBuilder(AdapterBuilder.Config(r=4, dropout=0.1, light_dropout=False)).apply(model)
    assert not any(isinstance(m, LightDropoutLinear) for m in model.modules())
    assert any(type(m) is nn.Dropout for m in model.modules())


def _compiled(model, backend: str = "aot_eager_decomp_partition"):
    """``model`` with its decoder layers compiled as ``train.compile`` does; by default through AOT autograd
    and inductor's partitioner without its code generation (the partitioner decides what is kept and what
    is recomputed, as on a GPU)."""
    torch._dynamo.reset()
    for layer in decoder_layers(model):
        layer.compile(backend=backend)
    return model


def test_hashed_masks_drop_p_independently_and_differ_by_seed():
    x = torch.ones(64, 4096)
    keep = hashed_keep(x, 0.1, torch.tensor(12345))
    assert keep.unique().tolist() == [0.0, pytest.approx(1 / 0.9)]
    dropped = (keep == 0).float()
    assert dropped.mean().item() == pytest.approx(0.1, abs=0.005)  # 262,144 draws: sd 0.0006
    flat = dropped.flatten() - dropped.mean()
    neighbours = (flat[1:] * flat[:-1]).mean() / flat.var()  # the next element's decision is unrelated
    rows = (flat.view(64, -1)[1:] * flat.view(64, -1)[:-1]).mean() / flat.var()  # and the next row's
    assert abs(neighbours.item()) < 0.02 and abs(rows.item()) < 0.02
    other = (hashed_keep(x, 0.1, torch.tensor(12346)) == 0).float()
    both = (dropped * other).mean().item()
    assert both == pytest.approx(0.01, abs=0.003)  # seeds one apart: independent masks (0.1 x 0.1)
    assert torch.equal(keep, hashed_keep(x, 0.1, torch.tensor(12345)))  # a pure function of the seed
    assert hashed_keep(x.bfloat16(), 0.1, torch.tensor(1)).dtype == torch.bfloat16


def _light_linear(p: float = 0.3) -> LightDropoutLinear:
    layer = nn.Linear(16, 4, bias=False)
    layer.__class__ = LightDropoutLinear
    layer.dropout_p = p
    layer.seed_base, layer.seed_offset = torch.tensor(123), torch.tensor(4)
    return layer


@pytest.mark.parametrize("backend", [None, "aot_eager_decomp_partition"])
@pytest.mark.parametrize("autocast", [False, True])
def test_the_compiled_form_computes_dropout_then_linear(backend, autocast):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, requires_grad=True)
    layer = _light_linear()
    grad_out = torch.randn(3, 5, 4)
    torch._dynamo.reset()
    fn = torch.compile(_compiled_dropped_linear, backend=backend) if backend else _compiled_dropped_linear
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fn(x, layer)
    out.backward(grad_out.to(out.dtype))
    light = out.detach(), x.grad.clone(), layer.weight.grad.clone()
    x.grad, layer.weight.grad = None, None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        seed = (torch.tensor(123) + 4 * 0x61C88647) & 0xFFFFFFFF
        keep = hashed_keep(x, 0.3, seed)
        ref = nn.functional.linear(nn.functional.dropout(x, 0.0) * keep, layer.weight)  # dropout, then lora_A
    ref.backward(grad_out.to(ref.dtype))
    assert (keep == 0).float().mean().item() == pytest.approx(0.3, abs=0.15)
    torch.testing.assert_close(light[0], ref.detach())
    torch.testing.assert_close(light[1], x.grad)
    torch.testing.assert_close(light[2], layer.weight.grad)
    assert light[2].dtype == torch.float32


@NEEDS_CXX
def test_inductor_hashes_as_eager_does():
    x = torch.ones(8, 3000)  # products past 32 bits: only their low bits count
    seed = torch.tensor(0xFFFFFFFF)
    torch._dynamo.reset()
    compiled = torch.compile(hashed_keep, backend="inductor")
    assert torch.equal(compiled(x, 0.2, seed), hashed_keep(x, 0.2, seed))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_light_dropout_is_seeded_per_pass_and_recompute_safe(tokenizer, monkeypatch, checkpointing):
    monkeypatch.setattr(LightDropoutLinear, "in_compiled", True)
    plain = _compiled(_lora(tokenizer, dropout=0.2))
    assert all(type(m) is nn.Identity for n, m in plain.named_modules() if n.endswith("lora_dropout.default"))
    (a, ga), (b, gb), (c, _) = _step(plain, seed=3), _step(plain, seed=3), _step(plain, seed=4)
    assert torch.equal(a, b) and all(torch.equal(ga[n], gb[n]) for n in ga)  # reproducible from the seed
    assert not torch.equal(a, c)  # a new pass, new masks
    none_loss, _ = _step(_compiled(_lora(tokenizer, dropout=0.0)), seed=3)
    assert not torch.equal(a, none_loss)  # the dropout is active
    if checkpointing:  # recomputed layers draw the masks of their forward pass
        ckpt_loss, ckpt = _step(_compiled(_lora(tokenizer, dropout=0.2, checkpointing=True)), seed=3)
        torch.testing.assert_close(ckpt_loss, a, rtol=0, atol=1e-6)
        for name, grad in ga.items():
            torch.testing.assert_close(ckpt[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_eager_layers_draw_no_pass_seed(tokenizer, monkeypatch):
    monkeypatch.setattr(LightDropoutLinear, "in_compiled", True)
    model = _lora(tokenizer, dropout=0.2)
    base = next(m for m in model.modules() if isinstance(m, LightDropoutLinear)).seed_base
    _step(model)
    assert int(base) == 0  # only compiled layers read it: eager runs consume no extra random numbers
    _step(_compiled(model))
    assert int(base) != 0


@pytest.mark.parametrize(
    ("backend", "dtype"),
    [
        ("aot_eager_decomp_partition", torch.float32),
        pytest.param("inductor", torch.bfloat16, marks=NEEDS_CXX),
    ],
)
def test_compiled_light_dropout_keeps_no_dropped_copies(tokenizer, monkeypatch, backend, dtype):
    """Under inductor with a bf16 model too (the 8B shape's case): without the selective-checkpoint tags the
    partitioner kept each dropped product for the weight gradient (GPU call 54)."""

    def kept(dropout: float) -> int:
        return saved_bytes(_compiled(_lora(tokenizer, dropout=dropout).to(dtype), backend))

    monkeypatch.setattr(LightDropoutLinear, "in_compiled", False)
    peft = kept(0.1)  # PEFT's dropout in compiled layers
    monkeypatch.setattr(LightDropoutLinear, "in_compiled", True)  # the default
    light, none = kept(0.1), kept(0.0)
    assert light < peft
    assert light <= none + 2 * 7 * 8  # dropout 0's activations and an 8-byte seed per adapted linear


def test_torch_reminder_about_in_place_ops_in_checkpointed_regions_is_dropped():
    """Torch's once-per-process reminder (its `wrap` module's logger) is filtered; other records pass."""
    import logging

    from torch._higher_order_ops import wrap

    import qlora_kit.model.lora_dropout  # noqa: F401  (installs the filter)

    def record(message: str) -> logging.LogRecord:
        return wrap.log.makeRecord(wrap.log.name, logging.WARNING, __file__, 1, message, None, None)

    reminder = (
        "\nDetected that context_fn is passed to torch.utils.checkpoint under torch.compile.\nPlease ..."
    )
    assert not wrap.log.filter(record(reminder))
    assert wrap.log.filter(record("something else"))
