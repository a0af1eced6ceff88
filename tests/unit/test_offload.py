"""Activation offloading of checkpointed layer inputs, on the CPU: same numbers, inputs off the device."""

from __future__ import annotations

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef

from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.testing import lora_step, make_tiny_llama
from qlora_kit.training.offload import (
    OffloadedCheckpoint,
    disable_offloaded_checkpointing,
    enable_offloaded_checkpointing,
)

TOKENS = 24


def _model(tokenizer, checkpointing: bool):
    model = make_tiny_llama(tokenizer=tokenizer, num_hidden_layers=3)
    model = AdapterBuilder(AdapterBuilder.Config(r=4, alpha=8, dropout=0.2)).apply(model)
    torch.manual_seed(1)  # lora_B starts at zero; give it values so every gradient is non-trivial
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.02)
    if checkpointing:
        base = model.get_base_model()
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        base.disable_input_require_grads()  # not needed when non-reentrant; it pins layer 0's input
    model.train()
    return model


def _step(model, seed: int = 7, dropout_seed: int = 8):
    return lora_step(model, TOKENS, seed, dropout_seed)


def _layers(model):
    return list(model.get_base_model().model.layers)


def test_hooks_around_checkpoint_see_exactly_the_layer_inputs(tokenizer):
    # The premise of the design: non-reentrant checkpoint saves each layer's positional input through
    # saved-tensor hooks active around the call, and nothing from inside the layer.
    model = _model(tokenizer, checkpointing=True)
    seen = []
    for layer in _layers(model):
        inner = layer._gradient_checkpointing_func

        def hooked(function, *args, _inner=inner, **kwargs):
            with torch.autograd.graph.saved_tensors_hooks(lambda x: seen.append(x.shape) or x, lambda x: x):
                return _inner(function, *args, **kwargs)

        layer._gradient_checkpointing_func = hooked
    model(input_ids=torch.randint(0, 300, (2, TOKENS)))
    assert seen == [torch.Size([2, TOKENS, 64])] * 3


@pytest.mark.parametrize("chunk_bytes", [256, 1 << 26])  # many host chunks per input, and one
def test_loss_and_lora_grads_equal_plain_checkpointing_and_none(tokenizer, chunk_bytes):
    loss_none, grads_none = _step(_model(tokenizer, checkpointing=False))
    loss_ckpt, grads_ckpt = _step(_model(tokenizer, checkpointing=True))
    model = _model(tokenizer, checkpointing=True)
    handle = enable_offloaded_checkpointing(model, min_bytes=0, chunk_bytes=chunk_bytes)
    loss_off, grads_off = _step(model)
    assert handle.offloader.offloaded == 3
    assert len(grads_off) == 3 * 7 * 2 and all(g.abs().sum() > 0 for g in grads_off.values())
    assert torch.equal(loss_off, loss_ckpt)
    assert all(torch.equal(grads_off[n], grads_ckpt[n]) for n in grads_ckpt)
    torch.testing.assert_close(loss_off, loss_none, rtol=0, atol=1e-6)
    for name, grad in grads_none.items():
        torch.testing.assert_close(grads_off[name], grad, rtol=0, atol=1e-6, msg=name)


def test_dropout_is_active_so_the_equality_covers_the_recomputed_masks(tokenizer):
    model = _model(tokenizer, checkpointing=True)
    enable_offloaded_checkpointing(model, min_bytes=0)
    assert not torch.equal(_step(model, dropout_seed=8)[0], _step(model, dropout_seed=9)[0])


def test_layer_inputs_leave_the_device_between_forward_and_backward(tokenizer):
    model = _model(tokenizer, checkpointing=True)
    handle = enable_offloaded_checkpointing(model, min_bytes=0)
    storages = []
    for layer in _layers(model):
        layer.register_forward_pre_hook(lambda m, a: storages.append(StorageWeakRef(a[0].untyped_storage())))
    ids = torch.randint(0, 300, (2, TOKENS))
    loss = model(input_ids=ids, labels=ids).loss
    assert len(storages) == 3 and all(s.expired() for s in storages)  # nothing holds them any more
    assert handle.offloader.pending_bytes() == 3 * 2 * TOKENS * 64 * 4  # they wait on the "host"
    loss.backward()
    assert handle.offloader.pending_bytes() == 0


def test_first_layers_offload_only_those_inputs_with_the_same_numbers(tokenizer):
    loss_ckpt, grads_ckpt = _step(_model(tokenizer, checkpointing=True))
    model = _model(tokenizer, checkpointing=True)
    handle = enable_offloaded_checkpointing(model, first_layers=2, min_bytes=0)
    loss_off, grads_off = _step(model)
    assert handle.offloader.offloaded == 2  # layers 0 and 1
    assert torch.equal(loss_off, loss_ckpt)
    assert all(torch.equal(grads_off[n], grads_ckpt[n]) for n in grads_ckpt)
    storages = []
    for layer in _layers(model):
        layer.register_forward_pre_hook(lambda m, a: storages.append(StorageWeakRef(a[0].untyped_storage())))
    loss = model(input_ids=torch.randint(0, 300, (2, TOKENS))).logits.sum()
    assert [s.expired() for s in storages] == [True, True, False]  # layer 2's input stays until backward
    loss.backward()
    model.zero_grad()
    enable_offloaded_checkpointing(model, min_bytes=0)  # every layer now (a first step near the limit)
    _step(model)
    assert handle.offloader.offloaded == 2 + 2 + 3


def test_without_offload_the_layer_inputs_stay_referenced(tokenizer):
    # the counterpart of the test above: plain checkpointing keeps every layer input alive
    model = _model(tokenizer, checkpointing=True)
    storages = []
    for layer in _layers(model):
        layer.register_forward_pre_hook(lambda m, a: storages.append(StorageWeakRef(a[0].untyped_storage())))
    logits = model(input_ids=torch.randint(0, 300, (2, TOKENS))).logits
    assert len(storages) == 3 and not any(s.expired() for s in storages)
    assert logits.requires_grad


def test_small_inputs_stay_put(tokenizer):
    model = _model(tokenizer, checkpointing=True)
    handle = enable_offloaded_checkpointing(model)  # default threshold: 1 MiB, far above these inputs
    _step(model)
    assert handle.offloader.offloaded == 0


def test_enable_is_idempotent_and_disable_restores_the_original_functions(tokenizer):
    model = _model(tokenizer, checkpointing=True)
    originals = [layer._gradient_checkpointing_func for layer in _layers(model)]
    handle = enable_offloaded_checkpointing(model)
    assert enable_offloaded_checkpointing(model.get_base_model()) is handle
    assert all(
        isinstance(layer._gradient_checkpointing_func, OffloadedCheckpoint) for layer in _layers(model)
    )
    assert disable_offloaded_checkpointing(model) is True
    assert [layer._gradient_checkpointing_func for layer in _layers(model)] == originals
    assert disable_offloaded_checkpointing(model) is False


def test_enable_reinstalls_after_checkpointing_is_enabled_again(tokenizer):
    model = _model(tokenizer, checkpointing=True)
    handle = enable_offloaded_checkpointing(model, min_bytes=0)
    model.get_base_model().activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": False}
    )
    model.get_base_model().disable_input_require_grads()
    assert enable_offloaded_checkpointing(model) is handle
    _step(model)
    assert handle.offloader.offloaded == 3


def test_enable_turns_checkpointing_on_and_disable_off_again(tokenizer):
    model = _model(tokenizer, checkpointing=False)
    enable_offloaded_checkpointing(model)
    assert model.get_base_model().is_activation_checkpointing
    disable_offloaded_checkpointing(model)
    assert not model.get_base_model().is_activation_checkpointing


def test_reentrant_checkpointing_is_refused(tokenizer):
    model = _model(tokenizer, checkpointing=False)
    model.get_base_model().activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": True}
    )
    before = [layer._gradient_checkpointing_func for layer in _layers(model)]
    with pytest.raises(ValueError, match="non-reentrant"):
        enable_offloaded_checkpointing(model)
    assert [layer._gradient_checkpointing_func for layer in _layers(model)] == before


def test_a_leaf_input_is_left_in_place(tokenizer):
    # enable_input_require_grads makes the first layer's input a leaf; AccumulateGrad holds it anyway
    model = _model(tokenizer, checkpointing=True)
    model.get_base_model().enable_input_require_grads()
    handle = enable_offloaded_checkpointing(model, min_bytes=0)
    loss_off, grads_off = _step(model)
    assert handle.offloader.offloaded == 2
    disable_offloaded_checkpointing(model)
    loss, grads = _step(model)
    assert torch.equal(loss_off, loss) and all(torch.equal(grads_off[n], g) for n, g in grads.items())
