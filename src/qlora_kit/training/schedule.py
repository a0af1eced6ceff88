"""Learning-rate schedule kinds (the `train.scheduler` section), registered in
:data:`qlora_kit.registry.schedulers`: ``linear``, ``constant`` and ``cosine``, each with warmup.

A schedule kind gives :meth:`Schedule.factor`, the multiplier of the peak learning rate at an
optimizer step; :meth:`Schedule.create` wraps it in a ``LambdaLR``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from pydantic import Field, model_validator

from qlora_kit.registry import schedulers
from qlora_kit.strict import StrictModel


class WarmupOptions(StrictModel):
    """Warmup, as a ratio of all steps or a number of steps."""

    warmup_ratio: float | None = Field(default=None, ge=0, lt=1)
    """Warmup as a fraction of all optimizer steps (the reference recipe's 0.03)."""
    warmup_steps: int | None = Field(default=None, ge=0)
    """Warmup as a number of optimizer steps."""

    @model_validator(mode="after")
    def _one_warmup(self) -> WarmupOptions:
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise ValueError("give at most one of `warmup_ratio` or `warmup_steps`")
        return self


class Schedule:
    """Base of schedule kinds: linear warmup, then :meth:`decay`. Override :meth:`decay`."""

    Options = WarmupOptions

    def __init__(self, config: Any):
        self.config = config

    def warmup_steps(self, total_steps: int) -> int:
        """Warmup length: ``warmup_steps``, or ``ceil(warmup_ratio * total_steps)`` as transformers
        computes it (the reference recipe: 0.03 of 300 steps = 9)."""
        if self.config.warmup_steps is not None:
            return min(self.config.warmup_steps, total_steps)
        return math.ceil((self.config.warmup_ratio or 0.0) * total_steps)

    def factor(self, step: int, total_steps: int) -> float:
        """Multiplier of the peak learning rate used by optimizer step ``step`` (0-based).

        Warmup rises linearly as ``(step + 1) / (warmup + 1)``: unlike transformers' ``step / warmup``,
        the first step is not wasted at lr 0, and the peak is reached at step ``warmup``.
        """
        warmup = self.warmup_steps(total_steps)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return self.decay((step - warmup) / max(1, total_steps - warmup))

    def decay(self, progress: float) -> float:
        """The multiplier after warmup, at ``progress`` in [0, 1]."""
        return 1.0

    def create(self, optimizer: torch.optim.Optimizer, total_steps: int, start_step: int = 0) -> Any:
        """A ``LambdaLR`` following :meth:`factor`, positioned after ``start_step`` steps; step it once
        per optimizer step.

        The optimizer's current learning rates are the peaks. Starting at ``start_step`` needs no saved
        scheduler state: the position and the config determine the schedule (so a resumed run can
        change the peak learning rate or the total number of steps).
        """
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(self.factor, total_steps=total_steps), last_epoch=start_step - 1
        )


@schedulers.register("linear")
class LinearSchedule(Schedule):
    """Linear decay to zero after warmup."""

    def decay(self, progress: float) -> float:
        return max(0.0, 1.0 - progress)


@schedulers.register("constant")
class ConstantSchedule(Schedule):
    """Constant learning rate after warmup."""


@schedulers.register("cosine")
class CosineSchedule(Schedule):
    """Cosine decay after warmup."""

    class Options(WarmupOptions):
        min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
        """Floor of the decay as a fraction of the peak learning rate."""

    def decay(self, progress: float) -> float:
        floor = self.config.min_lr_ratio
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
