"""Data order: micro-batches of row indices, reproducible from ``(seed, epoch)``, grouped into windows.

The order is a pure function of the seed and the epoch (no iterator state), so a resumed run rebuilds
the epoch's order and skips the windows already consumed: it sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

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
