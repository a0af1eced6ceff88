"""Length-grouped ordering: batches of similar-length examples (less padding), still shuffled."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def length_grouped_order(
    lengths: Sequence[int], batch_size: int, seed: int, mega_batch_mult: int = 50
) -> list[int]:
    """A random order in which consecutive ``batch_size`` indices have similar lengths.

    Shuffles, cuts the order into mega-batches of ``batch_size * mega_batch_mult`` indices, sorts each
    by length (longest first) and shuffles the resulting batches, so that batch composition stays random
    at the scale of a mega-batch while padding within a batch shrinks.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    size = max(1, batch_size * mega_batch_mult)
    grouped: list[int] = []
    for start in range(0, len(order), size):
        grouped += sorted(order[start : start + size], key=lambda i: -lengths[i])
    batches = [grouped[i : i + batch_size] for i in range(0, len(grouped), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [index for b in shuffled for index in batches[b]]


class LengthGroupedSampler(Sampler[int]):
    """A sampler yielding :func:`length_grouped_order`, reshuffled each epoch via :meth:`set_epoch`.

    Args:
        lengths: Token length of each example (the training dataset's ``length`` column).
        batch_size: The micro-batch size the DataLoader uses.
        seed: Base seed; epoch ``e`` uses ``seed + e``.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` on the next iteration."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(length_grouped_order(self.lengths, self.batch_size, self.seed + self.epoch))
