"""Data order: windows of row indices (one optimizer step each), reproducible from ``(seed, epoch)``.

The order is a pure function of the seed and the epoch (no iterator state), so a resumed run rebuilds
the epoch's order and skips the windows already consumed: it sees exactly the batches an
uninterrupted run would have seen.

An optimizer step is defined by rows: ``micro_batch_size x grad_accum`` rows (times the processes), as
the reference recipe defines it. How a step's rows are laid out into forward passes is a separate
choice: ``micro_batch_size`` rows per pass (``train.micro_batch_tokens: null``), or as few passes as fit
a token budget (:func:`token_budget_windows`). The token-normalised loss of a step does not depend on
the layout; only the number of kernel launches and the padding do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qlora_kit.training.kernels import is_long_plain_row
from qlora_kit.training.loss import with_targets

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


def token_budget_windows(
    lengths: Sequence[int],
    micro_batch_size: int,
    grad_accum: int,
    seed: int,
    epoch: int,
    budget: int,
    pass_tokens: Callable[[list[int]], int],
    planner: BatchPlanner | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[list[int]]]:
    """This process's windows of ``epoch``, each step's rows laid out into as few passes as fit ``budget``.

    The epoch's row order is that of :func:`epoch_batches` (the same permutation, or the planner's
    order flattened); every window holds the next ``rows_per_step x world_size`` rows, each process takes
    every ``world_size``-th of them (``rows_per_step = micro_batch_size x grad_accum``), and packs its share
    into passes (first fit, longest rows first)
    whose ``pass_tokens`` (the collated size of those rows) stay within ``budget``. A row longer than
    the budget gets a pass of its own.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = [
        i for batch in (planner or shuffled_batches)(lengths, micro_batch_size, generator) for i in batch
    ]
    step_rows = micro_batch_size * grad_accum * world_size
    usable = len(order) - len(order) % world_size
    plan = []
    for start in range(0, usable, step_rows):
        mine = order[start : min(start + step_rows, usable)][rank::world_size]
        plan.append(pack_rows(mine, lengths, budget, pass_tokens))
    return plan


def pack_rows(
    rows: list[int], lengths: Sequence[int], budget: int, pass_tokens: Callable[[list[int]], int]
) -> list[list[int]]:
    """``rows`` in passes of at most ``budget`` collated tokens: first fit, longest first (deterministic)."""
    passes: list[list[int]] = []
    for row in sorted(rows, key=lambda i: (-lengths[i], i)):
        for group in passes:
            if pass_tokens([lengths[i] for i in (*group, row)]) <= budget:
                group.append(row)
                break
        else:
            passes.append([row])
    return passes


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
    long_plain: list[bool] = field(default_factory=list)
    """Per batch: long rows without padding or packing (:func:`~qlora_kit.training.kernels.is_long_plain_row`)."""

    @classmethod
    def collate(cls, rows: Any, micro_batches: list[list[int]], collate_fn: Any, device: Any) -> Window:
        """Collate ``micro_batches`` (row indices) with ``collate_fn`` and move them to ``device``."""
        selected = [[rows[i] for i in micro] for micro in micro_batches]
        batches, counts = zip(*(with_targets(collate_fn(group)) for group in selected), strict=True)
        supervised = sum(counts)
        # the rows' own tokens: neither padding nor a packed pass's filler counts
        inputs = sum(len(row["input_ids"]) for group in selected for row in group)
        long_plain = [is_long_plain_row(b) for b in batches]
        on_device = [{k: to_device(v, device) for k, v in b.items()} for b in batches]
        return cls(on_device, supervised, inputs, long_plain)


def to_device(value: Any, device: Any) -> Any:
    """``value`` on ``device`` if it is a tensor. To CUDA through pinned memory, without waiting: a copy from
    pageable memory first waits for all work queued on the stream, which would stop the host from
    preparing the next step while the device still runs this one."""
    if not torch.is_tensor(value):
        return value
    if torch.device(device).type == "cuda":
        return value.pin_memory().to(device, non_blocking=True)
    return value.to(device)
