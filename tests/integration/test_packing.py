"""Packed batches give the same loss as padded batches on the same rows (tiny Llama and GPT-2).

Loss = sum of token cross-entropies over supervised tokens / their count (labels shifted by one).
The tolerance is 1e-5 absolute in fp32: the two layouts run the same per-example attention, so
only summation order differs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qlora_kit.data import PackedCollator, PaddedCollator
from qlora_kit.formatting import build_formatter
from qlora_kit.testing import make_alpaca_rows, make_tiny_llama

TOLERANCE = 1e-5


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    targets = labels[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="sum")
    return ce / (targets != -100).sum()


@pytest.fixture(scope="module")
def rows(tokenizer):
    formatter = build_formatter("alpaca")
    encoded = [formatter.encode(r, tokenizer, max_length=256) for r in make_alpaca_rows(6, seed=5)]
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]


def tiny_gpt2(tokenizer, attn):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=4, n_positions=512, vocab_size=len(tokenizer), attn_implementation=attn
    )
    return GPT2LMHeadModel(config)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_loss_equals_padded_loss(rows, tokenizer, attn, arch):
    model = make_tiny_llama(tokenizer=tokenizer, attn_implementation=attn) if arch == "llama" else None
    model = (model or tiny_gpt2(tokenizer, attn)).eval()
    assert model.config._attn_implementation == attn
    padded = PaddedCollator(pad_token_id=0)(rows)
    packed = PackedCollator()(rows)
    assert (packed["labels"] != -100).sum() == (padded["labels"][:, 1:] != -100).sum()
    with torch.no_grad():
        # use_cache=False: transformers only detects packing from position_ids when there is no cache.
        out = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], use_cache=False)
        padded_loss = token_loss(out.logits, padded["labels"])
        out = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False)
        packed_loss = token_loss(out.logits, packed["labels"])
    assert abs(packed_loss.item() - padded_loss.item()) < TOLERANCE


def test_without_restarting_positions_examples_would_see_each_other(rows, tokenizer):
    # Guards the test above: plain concatenation (no position_ids) must give a different loss.
    model = make_tiny_llama(tokenizer=tokenizer).eval()
    packed = PackedCollator()(rows)
    with torch.no_grad():
        isolated = token_loss(
            model(**{k: packed[k] for k in ("input_ids", "position_ids")}, use_cache=False).logits,
            packed["labels"],
        )
        leaking = token_loss(model(input_ids=packed["input_ids"], use_cache=False).logits, packed["labels"])
    assert abs(isolated.item() - leaking.item()) > 1e-3
