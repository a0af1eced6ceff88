"""Data order: micro-batches of row indices, reproducible from ``(seed, epoch)``, grouped into windows.

The order is a pure function of the seed and the epoch (no iterator state), so a resumed run rebuilds
the epoch's order and skips the windows already consumed: it sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from qlora_kit.training.loss import count_supervised

BatchPlanner = Callable[[Sequence[int], int, torch.Generator], list[list[int]]]
"""``(row_lengths, micro_batch_size, generator) -> micro-batches of row indices`` for one epoch.

A length-grouping planner (less padding) plugs in here; it must draw all its randomness from
``generator`` so the order stays reproducible."""


def shuffled_batches(
    lengths: Sequence[int], micro_batch_size: int, generator: torch.Generator
) -> list[list[int]]:
    """The default planner: a random permutation cut into micro-batches (the last may be smaller)."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    return [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]


def epoch_batches(
    lengths: Sequence[int],
    micro_batch_size: int,
    seed: int,
    epoch: int,
    planner: BatchPlanner | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[int]]:
    """This process's micro-batches of ``epoch``.

    Every process builds the same plan and takes every ``world_size``-th micro-batch, so that all
    processes run the same number of steps, the plan is cut to a multiple of ``world_size``.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    plan = (planner or shuffled_batches)(lengths, micro_batch_size, generator)
    usable = len(plan) - len(plan) % world_size
    return plan[rank:usable:world_size]


def windows(micro_batches: list[list[int]], grad_accum: int) -> list[list[list[int]]]:
    """Consecutive groups of ``grad_accum`` micro-batches: one optimizer step each (the last may be short)."""
    return [micro_batches[i : i + grad_accum] for i in range(0, len(micro_batches), grad_accum)]


def row_lengths(rows: Any) -> list[int]:
    """Token count of each row (datasets' column access when available: no per-row decoding)."""
    column = rows["input_ids"] if hasattr(rows, "column_names") else (r["input_ids"] for r in rows)
    return [len(ids) for ids in column]


@dataclass
class Window:
    """One optimizer step's micro-batches (on the device) and their token counts on this process.

    The counts are taken on the CPU before the batches move, so reading them never waits for the device.
    """

    batches: list[dict[str, Any]]
    supervised_tokens: int
    input_tokens: int

    @classmethod
    def collate(cls, rows: Any, micro_batches: list[list[int]], collate_fn: Any, device: Any) -> Window:
        """Collate ``micro_batches`` (row indices) with ``collate_fn`` and move them to ``device``."""
        batches = [collate_fn([rows[i] for i in micro]) for micro in micro_batches]
        supervised = sum(count_supervised(b) for b in batches)
        inputs = sum(_input_tokens(b) for b in batches)
        on_device = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]
        return cls(on_device, supervised, inputs)


def _input_tokens(batch: dict[str, Any]) -> int:
    """Real (non-padding) input tokens of a batch."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()
