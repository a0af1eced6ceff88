"""Length-grouped ordering: batches of similar-length examples (less padding), still shuffled."""

from __future__ import annotations

from collections.abc import Sequence

import torch

MEGA_BATCH_MULT = 50


def length_grouped_batches(
    lengths: Sequence[int],
    micro_batch_size: int,
    generator: torch.Generator,
    mega_batch_mult: int = MEGA_BATCH_MULT,
) -> list[list[int]]:
    """Random micro-batches of similar-length examples, all randomness drawn from ``generator``.

    Shuffles, cuts the order into mega-batches of ``micro_batch_size * mega_batch_mult`` indices, sorts
    each by length (longest first), cuts it into micro-batches and shuffles those, so batch composition
    stays random at the scale of a mega-batch while the padding inside a batch shrinks. The signature is
    the trainer's batch-planner hook: ``(lengths, micro_batch_size, generator) -> micro-batches``.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    size = max(1, micro_batch_size * mega_batch_mult)
    batches: list[list[int]] = []
    for start in range(0, len(order), size):
        group = sorted(order[start : start + size], key=lambda i: -lengths[i])
        batches += [group[i : i + micro_batch_size] for i in range(0, len(group), micro_batch_size)]
    return [batches[b] for b in torch.randperm(len(batches), generator=generator).tolist()]


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """The indices of :func:`length_grouped_batches` with a generator seeded by ``seed``, flattened."""
    generator = torch.Generator().manual_seed(seed)
    return [i for batch in length_grouped_batches(lengths, batch_size, generator) for i in batch]
