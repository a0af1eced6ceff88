"""A training pass makes the host wait for the device nowhere: checked on the CPU by the operators that would
(on a GPU, a boolean-mask selection, ``nonzero`` or ``.item()`` each stop the host until the device catches
up, which kept W1's step bound by the host: benchmarks/RESULTS.md, run 2026-12-01h).

The path is the GPU's: ``sdpa_varlen`` (here its SDPA fallback, on the CPU), packed passes with
:func:`~qlora_kit.model.varlen_attention.packed_mask`, supervised positions found by the collating side
(:func:`~qlora_kit.training.loss.with_targets`), and the head-split loss.
"""

from __future__ import annotations

import collections
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from qlora_kit.data import PackedCollator
from qlora_kit.model import varlen_attention as va
from qlora_kit.testing import make_distilgpt2_shape, make_tiny_llama
from qlora_kit.training.batches import Window
from qlora_kit.training.head_loss import chunked_causal_lm_loss
from qlora_kit.training.loss import causal_lm_loss, count_supervised

WAITING_OPS = {"aten::nonzero", "aten::_local_scalar_dense", "aten::masked_select", "aten::is_nonzero",
               "aten::equal", "aten::_unique2", "aten::unique_consecutive", "aten::repeat_interleave"}  # fmt: skip
"""Operators whose result's size or value the host needs before it can go on."""


class WaitFinder(TorchDispatchMode):
    """Counts the operators that would make the host wait for a GPU, with where they were called from."""

    def __init__(self) -> None:
        super().__init__()
        self.found: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = func._schema.name
        waits = name in WAITING_OPS
        if name in (
            "aten::index.Tensor",
            "aten::index_put_",
            "aten::index_put",
            "aten::_index_put_impl_",
        ) or (name.startswith("aten::index") and len(args) > 1 and isinstance(args[1], (list, tuple))):
            waits = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
        if waits:
            frames = [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in traceback.extract_stack()[-8:-2]]
            self.found[f"{name} at {' <- '.join(reversed(frames))}"] += 1
        return func(*args, **(kwargs or {}))


ROWS = [
    {"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]},
    {"input_ids": [8, 9, 10, 11, 12], "labels": [-100, 9, 10, 11, 12]},
    {"input_ids": [13, 14, 15], "labels": [-100, 14, 15]},
]


def _varlen(model):
    va.register()
    model.set_attn_implementation(va.NAME)
    return model.train()


def _model(family):
    torch.manual_seed(0)
    if family == "gpt2":  # GPT-2 checks its ids for padding when there is no attention mask
        return _varlen(make_distilgpt2_shape(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    return _varlen(make_tiny_llama())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_packed_training_pass_never_waits_for_the_device(family):
    model = _model(family)
    window = Window.collate(ROWS, [[0, 1, 2]], PackedCollator(varlen_kwargs=True, widths=(16,)), "cpu")
    finder = WaitFinder()
    with finder:  # the head-split loss: the fused one's plain-head branch gathers its rows the same way
        loss = chunked_causal_lm_loss(model, window.batches[0])
        loss.backward()
    assert not finder.found, "\n".join(f"{n} x {where}" for where, n in finder.found.items())
    assert window.supervised_tokens == count_supervised(PackedCollator(widths=(16,))(ROWS))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_gathered_targets_give_the_losses_and_gradients_of_masked_ones(family):
    """The head-split loss on a batch with the positions found on the CPU equals the standard loss (full
    logits, ignore_index) on the same batch without them, gradients included."""
    model = _model(family).eval()  # no dropout: two forward passes to compare
    window = Window.collate(ROWS, [[0, 1, 2]], PackedCollator(varlen_kwargs=True, widths=(16,)), "cpu")
    batch = window.batches[0]
    assert set(batch) >= {"target_positions", "target_ids", "attention_mask"}
    losses, grads = [], []
    masked = {k: v for k, v in batch.items() if k not in ("target_positions", "target_ids")}
    for fn, b in ((chunked_causal_lm_loss, batch), (causal_lm_loss, masked)):
        model.zero_grad()
        loss = fn(model, b)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
