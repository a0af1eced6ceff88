"""Which micro-batches get cuDNN attention first: long rows that transformers runs without a mask."""

from __future__ import annotations

import pytest
import torch

from qlora_kit.data.collate import PackedCollator, PaddedCollator
from qlora_kit.training import kernels
from qlora_kit.training.batches import Window
from qlora_kit.training.kernels import is_long_plain_row, long_row_attention


@pytest.fixture(autouse=True)
def short_threshold(monkeypatch):
    monkeypatch.setattr(kernels, "LONG_ROW_TOKENS", 16)  # the rule, not the length, is under test


def rows(*lengths: int) -> list[dict[str, list[int]]]:
    return [{"input_ids": list(range(1, n + 1)), "labels": list(range(1, n + 1))} for n in lengths]


def test_one_long_row_without_padding_is_plain():
    assert is_long_plain_row(PaddedCollator(pad_token_id=0, pad_to_multiple_of=None)(rows(32)))
    assert is_long_plain_row({"input_ids": torch.ones(1, 32, dtype=torch.long)})  # no mask at all


def test_short_padded_and_packed_rows_are_not():
    padded = PaddedCollator(pad_token_id=0, pad_to_multiple_of=None)
    assert not is_long_plain_row(padded(rows(8)))  # short
    assert not is_long_plain_row(padded(rows(32, 20)))  # padding: a mask
    assert not is_long_plain_row(PackedCollator()(rows(20, 20)))  # packed: positions reset
    assert not is_long_plain_row(PackedCollator(flash_kwargs=True)(rows(40)))  # variable-length kernel


def test_positions_that_count_up_are_plain():
    batch = {"input_ids": torch.ones(2, 32, dtype=torch.long), "position_ids": torch.arange(32).expand(2, 32)}
    assert is_long_plain_row(batch)


def test_window_marks_each_micro_batch():
    data = rows(32, 32, 8)
    window = Window.collate(
        data, [[0], [1, 2]], PaddedCollator(pad_token_id=0, pad_to_multiple_of=None), "cpu"
    )
    assert window.long_plain == [True, False]


def test_no_backend_change_on_cpu_or_for_other_rows():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with long_row_attention(torch.device("cpu"), True), long_row_attention(torch.device("cuda"), False):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_evaluation_asks_for_the_long_row_kernel_per_batch(monkeypatch, tokenizer):
    from contextlib import nullcontext

    from qlora_kit.testing import make_tiny_llama
    from qlora_kit.training import evaluation

    asked = []
    monkeypatch.setattr(
        evaluation, "long_row_attention", lambda device, long: asked.append(long) or nullcontext()
    )
    model = make_tiny_llama(tokenizer=tokenizer)
    data = rows(32, 8, 32)
    result = evaluation.evaluate(
        model, data, PaddedCollator(pad_token_id=0, pad_to_multiple_of=None), batch_size=1
    )
    assert asked == [True, False, True] and result["eval_tokens"] == 31 + 7 + 31
