"""The token-normalised loss: shifting, packed-row boundaries, and agreement with transformers' loss."""

from __future__ import annotations

import random

import pytest
import torch

from qlora_kit.data.collate import PackedCollator, PaddedCollator
from qlora_kit.testing import make_tiny_llama
from qlora_kit.training.loss import IGNORE_INDEX, causal_lm_loss, count_supervised, shift_targets


def _rows(n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(1, 300) for _ in range(rng.randint(5, 17))]
        prompt = rng.randint(1, 4)
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_tiny_llama(tokenizer=tokenizer).eval()


def test_shift_targets_predicts_next_label_and_masks_last_position():
    labels = torch.tensor([[IGNORE_INDEX, 5, 6, 7]])
    assert shift_targets(labels).tolist() == [[5, 6, 7, IGNORE_INDEX]]


def test_shift_targets_masks_the_first_token_of_each_packed_example():
    labels = torch.tensor([[1, 2, 3, 4, 5]])
    position_ids = torch.tensor([[0, 1, 2, 0, 1]])  # two examples: [1, 2, 3] and [4, 5]
    assert shift_targets(labels, position_ids).tolist() == [[2, 3, IGNORE_INDEX, 5, IGNORE_INDEX]]


def test_count_supervised_counts_shifted_targets():
    batch = PaddedCollator(pad_token_id=0)(_rows(3))
    expected = sum(sum(label != IGNORE_INDEX for label in r["labels"][1:]) for r in _rows(3))
    assert count_supervised(batch) == expected


def test_mean_loss_matches_transformers_loss(model):
    batch = PaddedCollator(pad_token_id=0)(_rows(4))
    with torch.no_grad():
        ours = causal_lm_loss(model, batch) / count_supervised(batch)
        theirs = model(**batch).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_packed_and_padded_batches_give_the_same_loss(model):
    rows = _rows(3, seed=1)
    padded, packed = PaddedCollator(pad_token_id=0)(rows), PackedCollator()(rows)
    assert count_supervised(padded) == count_supervised(packed)
    with torch.no_grad():
        torch.testing.assert_close(
            causal_lm_loss(model, packed), causal_lm_loss(model, padded), rtol=1e-5, atol=1e-5
        )


def test_loss_is_a_sum_over_tokens_not_a_mean(model):
    rows = _rows(2, seed=2)
    collate = PaddedCollator(pad_token_id=0)
    with torch.no_grad():
        torch.testing.assert_close(
            causal_lm_loss(model, collate(rows * 2)), 2 * causal_lm_loss(model, collate(rows))
        )
