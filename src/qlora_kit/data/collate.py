"""Collators: turn encoded rows ``{"input_ids": [...], "labels": [...]}`` into model batches.

Labels are aligned with ``input_ids`` (the loss shifts them); masked positions hold -100.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass
class PaddedCollator:
    """Right-pads a micro-batch to its longest row rounded up to ``pad_to_multiple_of``, or to
    ``max_length`` when given (the seed's `padding: max_length`). Padding is never a label."""

    pad_token_id: int
    pad_to_multiple_of: int | None = 8
    max_length: int | None = None

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        width = self.max_length or longest
        if self.max_length is None and self.pad_to_multiple_of:
            width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.as_tensor(row["input_ids"])
            labels[i, :n] = torch.as_tensor(row["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
