"""How each epoch's rows become optimizer steps and forward passes on this process.

A step is ``micro_batch_size x grad_accum`` rows (times the processes); its passes are either
``micro_batch_size`` rows each, or as many rows as fit the token budget. The budget, checkpointing and
activation offload are decided together from the memory plan (:func:`~qlora_kit.planning.live.choose_layout`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from qlora_kit.model.prepare import set_grad_checkpointing
from qlora_kit.planning.live import MemoryDecision, choose_layout
from qlora_kit.training.batches import epoch_batches, pack_rows, row_lengths, token_budget_windows, windows
from qlora_kit.training.offload import OffloadHandle, enable_offloaded_checkpointing

BUDGETED_EVAL_DEVICES = ("cuda",)
"""Where evaluation takes passes of the token budget. On an H200 W1's evaluation of 45 rows went from ~560 to
~76 ms (the host bounds its 2-row passes); on 2 CPU cores, which compute, it took 6.9 s in 2-row passes against
10.9 s packed into 3 budget passes (block-diagonal attention over each pass) and 9.0 s padded into 4
(``benchmarks/eval_layouts.py``)."""


class StepLayout:
    """The windows of every epoch for one process, and the memory decision they were laid out by.

    Args:
        cfg: The ``train`` section.
        rows: The training rows.
        collate_fn: Rows -> batch; its ``tokens(lengths)`` (when it has one) sizes a pass.
        batch_planner: Orders an epoch's rows (default: shuffled).
        accelerator: Gives this process's rank and the device.
        model: The model the memory plan is made for.
    """

    def __init__(self, cfg: Any, rows: Sequence[Any], collate_fn: Any, batch_planner: Any, accelerator: Any,
                 model: Any):  # fmt: skip
        self.cfg, self.planner, self.accelerator = cfg, batch_planner, accelerator
        self.lengths = row_lengths(rows)
        self.pass_tokens: Callable[[list[int]], int] = getattr(collate_fn, "tokens", None) or (
            lambda lengths: len(lengths) * max(lengths)
        )
        self.memory: MemoryDecision = self._choose(model)
        self._eval_passes: tuple[Sequence[Any], list[list[int]]] | None = None

    def windows(self, epoch: int) -> list[list[list[int]]]:
        """This process's windows of ``epoch``: one per optimizer step, each a list of forward passes (row
        indices), laid out by the token budget when there is one (:mod:`~qlora_kit.training.batches`)."""
        acc, cfg = self.accelerator, self.cfg
        if self.memory.budget is not None:
            return token_budget_windows(self.lengths, cfg.micro_batch_size, cfg.grad_accum, cfg.seed, epoch,
                                        self.memory.budget, self.pass_tokens, self.planner,
                                        acc.process_index, acc.num_processes)  # fmt: skip
        micro = epoch_batches(self.lengths, cfg.micro_batch_size, cfg.seed, epoch, self.planner,
                              acc.process_index, acc.num_processes)  # fmt: skip
        return windows(micro, cfg.grad_accum)

    def pass_widths(self, widths: Callable[[list[int]], int], total_steps: int) -> Counter[int]:
        """How many of the run's first ``total_steps`` windows' passes have each width (``widths(row
        lengths)``: a pass's length as its collator makes it), over as many epochs as they take."""
        counts: Counter[int] = Counter()
        epoch, steps = 0, 0
        while steps < total_steps:
            epoch_windows = self.windows(epoch)[: total_steps - steps] or [[]]  # [[]]: no window, stop
            counts.update(
                widths([self.lengths[i] for i in rows]) for window in epoch_windows for rows in window
            )
            steps, epoch = steps + len(epoch_windows), epoch + 1
        return counts

    def eval_passes(self, rows: Sequence[Any]) -> list[list[int]] | None:
        """``rows`` (evaluation rows) laid out into passes of the training pass's token budget, which they
        fit with room to spare (no gradients, no saved activations), on the devices of
        :data:`BUDGETED_EVAL_DEVICES`; None (``micro_batch_size`` rows a pass) elsewhere or without a budget."""
        if self.memory.budget is None or self.accelerator.device.type not in BUDGETED_EVAL_DEVICES:
            return None
        if self._eval_passes is None or self._eval_passes[0] is not rows:  # the same rows at every evaluation
            passes = pack_rows(
                list(range(len(rows))), row_lengths(rows), self.memory.budget, self.pass_tokens
            )
            self._eval_passes = (rows, passes)
        return self._eval_passes[1]

    def _choose(self, model: Any) -> MemoryDecision:
        """Resolve `auto` layout settings from the first epoch's sizes: the largest step in one pass, the
        longest row, and the largest pass of ``micro_batch_size`` rows."""
        acc, cfg, lengths, tokens = self.accelerator, self.cfg, self.lengths, self.pass_tokens
        whole_steps = token_budget_windows(lengths, cfg.micro_batch_size, cfg.grad_accum, cfg.seed, 0, 2**62,
                                           tokens, self.planner, acc.process_index, acc.num_processes)  # fmt: skip
        micro = epoch_batches(lengths, cfg.micro_batch_size, cfg.seed, 0, self.planner)
        return choose_layout(
            cfg, model, acc.device,
            step_tokens=max(tokens([lengths[i] for i in w[0]]) for w in whole_steps),
            row_tokens=tokens([max(lengths)]),
            pass_tokens=max(tokens([lengths[i] for i in m]) for m in micro),
        )  # fmt: skip


def apply_memory_layout(model: Any, memory: MemoryDecision) -> OffloadHandle | None:
    """Checkpoint and offload ``model``'s decoder layers as ``memory`` says; the offload handle, if any."""
    set_grad_checkpointing(model, memory.grad_checkpointing, memory.checkpoint_layers)
    if not memory.activation_offload:
        return None
    return enable_offloaded_checkpointing(model, first_layers=memory.offload_layers)


def lean_on_every_layer(model: Any, memory: MemoryDecision) -> str:
    """After a first step that came too close to the device's limit: checkpointing on for every layer, or
    with offload, offload for every layer (numerics do not change). Returns what was turned on."""
    if memory.activation_offload:
        enable_offloaded_checkpointing(model)  # installs on the layers it skipped
        return "activation offload"
    set_grad_checkpointing(model, True)
    return "activation checkpointing"
