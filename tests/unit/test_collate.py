"""Collators (padded, packed), collator choice and fallback, length-grouped ordering."""

from __future__ import annotations

import pytest
import torch

from qlora_kit.config import DataConfig, SourceConfig
from qlora_kit.data import (
    IGNORE_INDEX,
    AutoPackCollator,
    PackedCollator,
    PaddedCollator,
    length_grouped_batches,
    length_grouped_order,
    make_collator,
)

ROWS = [
    {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    {"input_ids": [8, 9, 10, 11, 12], "labels": [8, -100, 10, 11, 12]},
]


def cfg(**kw) -> DataConfig:
    return DataConfig(source=SourceConfig(rows=[{"text": "x"}]), **kw)


def test_padded_collator_pads_to_a_multiple_of_8_and_masks_padding():
    batch = PaddedCollator(pad_token_id=0)(ROWS)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].sum(1).tolist() == [3, 5]
    assert batch["labels"][0].tolist() == [-100, 6, 7] + [-100] * 5
    assert batch["input_ids"][1, 5:].tolist() == [0, 0, 0]


def test_padded_collator_max_length_is_the_seeds_fixed_width():
    assert PaddedCollator(pad_token_id=0, max_length=16)(ROWS)["input_ids"].shape == (2, 16)


def test_packed_collator_concatenates_with_restarting_positions():
    batch = PackedCollator()(ROWS)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4]]
    # The second example's first token (8) must not be predicted from the first example's last one.
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, -100, 10, 11, 12]]


def test_packed_collator_flash_kwargs_give_cumulative_lengths():
    batch = PackedCollator(flash_kwargs=True)(ROWS)
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 8] and batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"].item() == batch["max_length_k"].item() == 5
    assert all(isinstance(v, torch.Tensor) for v in batch.values())  # all movable with .to(device)


def test_make_collator_follows_the_config(tokenizer):
    padded = make_collator(cfg(padding="max_length", max_length=64), tokenizer)
    assert isinstance(padded, PaddedCollator) and padded.max_length == 64
    assert padded.pad_token_id == tokenizer.eos_token_id  # the test tokenizer has no pad token
    assert make_collator(cfg(packing=False), tokenizer).max_length is None
    assert isinstance(make_collator(cfg(), tokenizer), AutoPackCollator)  # packing: auto with sdpa
    assert isinstance(make_collator(cfg(), tokenizer, attn_implementation="paged|sdpa"), PaddedCollator)
    assert isinstance(make_collator(cfg(packing=True), tokenizer), PackedCollator)
    assert make_collator(cfg(packing=True), tokenizer, attn_implementation="flash_attention_2").flash_kwargs


def test_packing_with_an_unsupported_attention_falls_back_to_padding(tokenizer):
    with pytest.warns(UserWarning, match="cannot keep packed examples apart"):
        collator = make_collator(cfg(packing=True), tokenizer, attn_implementation="paged|sdpa")
    assert isinstance(collator, PaddedCollator)


def padded_width(lengths, batches):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_length_grouped_batches_cut_padding_and_stay_a_permutation():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 500, (400,), generator=g).tolist()
    grouped = length_grouped_batches(lengths, 4, torch.Generator().manual_seed(1))
    assert sorted(i for b in grouped for i in b) == list(range(400))
    order = torch.randperm(400, generator=torch.Generator().manual_seed(1)).tolist()
    random_batches = [order[i : i + 4] for i in range(0, 400, 4)]
    assert padded_width(lengths, grouped) < 0.8 * padded_width(lengths, random_batches)


def test_length_grouped_order_is_reproducible_and_changes_with_the_epoch():
    lengths = list(range(1, 101))
    assert length_grouped_order(lengths, 4, seed=3) == length_grouped_order(lengths, 4, seed=3)
    first = length_grouped_order(lengths, 4, seed=3)
    assert length_grouped_order(lengths, 4, seed=4) != first and sorted(first) == list(range(100))


def test_ignore_index_is_the_loss_convention():
    assert IGNORE_INDEX == -100 == torch.nn.CrossEntropyLoss().ignore_index


def test_auto_packing_packs_only_when_it_removes_padding():
    auto = AutoPackCollator(PaddedCollator(0, pad_to_multiple_of=8), PackedCollator())
    rows = lambda *lengths: [{"input_ids": [1] * n, "labels": [1] * n} for n in lengths]  # noqa: E731
    assert "position_ids" in auto(rows(200, 30, 40))  # 600 padded positions for 270 tokens: packed
    assert "attention_mask" in auto(rows(2048, 2048))  # equal lengths: nothing to unpad, flash stays usable
    assert "attention_mask" in auto(rows(64))  # one row
    assert auto.tokens([200, 30, 40]) == 270 and auto.tokens([2048, 2048]) == 4096
    flash = AutoPackCollator(PaddedCollator(0), PackedCollator(flash_kwargs=True))
    assert flash.packs([2048, 2048])  # variable-length kernels: packing costs nothing


def test_packed_rows_rounded_up_with_a_masked_example_keep_the_loss(tokenizer):
    """`data.pad_to_multiple_of` on a packed row: one filler example of pad tokens (positions restarting,
    never a label) takes the row to the multiple and adds nothing to the summed loss."""
    from qlora_kit.testing import make_tiny_llama
    from qlora_kit.training.loss import causal_lm_loss

    rounded = PackedCollator(pad_to_multiple_of=16, pad_token_id=0)
    batch = rounded(ROWS)
    assert batch["input_ids"].shape == (1, 16) and rounded.tokens([3, 5]) == 16
    # new examples, none longer than the longest row (5): nothing attends across, positions stay in range
    assert batch["position_ids"][0, 8:].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert batch["labels"][0, 8:].tolist() == [IGNORE_INDEX] * 8
    assert PackedCollator(pad_to_multiple_of=8)(ROWS)["input_ids"].shape == (1, 8)  # already a multiple
    assert make_collator(cfg(packing=True, pad_to_multiple_of=16), tokenizer).tokens([3, 5]) == 16
    model = make_tiny_llama(tokenizer=tokenizer).eval()
    with torch.no_grad():
        plain, padded = causal_lm_loss(model, PackedCollator()(ROWS)), causal_lm_loss(model, batch)
    torch.testing.assert_close(padded, plain)


def test_fixed_width_packs_every_pass_into_one_shape():
    """train.cuda_graphs with a token budget: every pass that fits is packed and filled to the budget, so one
    recording serves them all; a longer row keeps its own length; padded-only collators are left alone."""
    from qlora_kit.data.collate import bucketed_widths

    auto = AutoPackCollator(PaddedCollator(0, pad_to_multiple_of=8), PackedCollator(pad_token_id=0))
    assert bucketed_widths(auto, 1000).widths == (256, 512, 768, 1000)  # quarters, rounded up to 64
    wide = bucketed_widths(auto, 32, n=1)
    assert isinstance(wide, PackedCollator) and wide.widths == (32,)
    rows = lambda *lengths: [{"input_ids": [1] * n, "labels": [1] * n} for n in lengths]  # noqa: E731
    for lengths in [(3, 5), (16, 16), (31,), (32,)]:  # (16, 16) and (31,): the auto collator would pad them
        batch = wide(rows(*lengths))
        assert batch["input_ids"].shape == (1, 32), lengths
        real = sum(lengths)
        assert batch["labels"][0, real:].eq(IGNORE_INDEX).all()  # the filler is never a label
        filler = batch["position_ids"][0, real:].tolist() or [0]
        # examples of their own (positions restart), none longer than the longest row: a model's
        # position embeddings (GPT-2's stop at 1,024) cover every position the rows use
        assert filler[0] == 0 and max(filler) < max(lengths)
        assert all(b == a + 1 or b == 0 for a, b in zip(filler, filler[1:], strict=False))
    assert wide(rows(40))["input_ids"].shape == (1, 40)  # longer than the width: its own length
    assert wide.tokens([3, 5]) == 32
    quarters = bucketed_widths(auto, 1000)
    assert [quarters.tokens([n]) for n in (1, 256, 257, 700, 999, 1001)] == [256, 256, 512, 768, 1000, 1001]
    padded = PaddedCollator(0)
    assert bucketed_widths(padded, 32) is padded
