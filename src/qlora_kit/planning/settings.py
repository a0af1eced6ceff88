"""What a memory or speed plan is made for: the training settings (:class:`Settings`) and the adapter
(:class:`Adapter`), and the search for the fewest decoder layers to checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Settings:
    """The memory-relevant training settings a plan is made for."""

    grad_checkpointing: bool = True
    activation_offload: bool = False
    loss: str = "standard"
    """``standard`` (whole logits), ``chunked`` or ``fused`` (never the whole logits)."""
    compiled: bool = False
    """``train.compile`` resolves on for this model on a GPU (it is skipped under activation offload:
    :attr:`compiles`)."""
    checkpoint_layers: int | None = None
    """With checkpointing: how many decoder layers are checkpointed (None: all). The others keep their
    activations: the fewest that fit is the fastest layout short of no checkpointing."""

    def checkpointed(self, layers: int) -> int:
        """How many of the model's ``layers`` decoder layers these settings checkpoint."""
        if not self.grad_checkpointing:
            return 0
        return layers if self.checkpoint_layers is None else min(self.checkpoint_layers, layers)

    def describe(self, layers: int) -> str:
        """``on``, ``off`` or ``on for K of N layers``: the checkpointing part of a log line."""
        k = self.checkpointed(layers)
        return "off" if k == 0 else "on" if k == layers else f"on for {k} of {layers} layers"

    @property
    def compiles(self) -> bool:
        """The decoder layers run compiled (compilation is not combined with activation offload)."""
        return self.compiled and not self.activation_offload


@dataclass(frozen=True)
class Adapter:
    """What the planner needs of the `adapter` and optimizer settings."""

    r: int = 16
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    modules_to_save: tuple[str, ...] = ()
    optimizer: str = "adamw_torch"


def layouts(checkpointing: bool | str, offload: bool | str) -> list[tuple[bool, bool, bool]]:
    """``(checkpointing, offload, some layers only)`` layouts that `train.grad_checkpointing` and
    `train.activation_offload` (``True``, ``False`` or ``"auto"``) allow, fastest first: none; the fewest
    layers that fit (`auto` checkpointing only: the count is searched by :func:`fewest_checkpointed_layers`);
    every layer; every layer with offload."""
    order = ((False, False, False), (True, False, True), (True, False, False), (True, True, False))
    return [
        (c, o, some)
        for c, o, some in order
        if checkpointing in ("auto", c) and offload in ("auto", o) and (checkpointing == "auto" or not some)
    ]


def fewest_checkpointed_layers(fits: Any, settings: Settings, layers: int) -> int | None:
    """The fewest decoder layers (1 to ``layers - 1``) to checkpoint for ``fits(settings)`` to hold, or
    None when checkpointing only some layers does not fit (memory falls as more are checkpointed:
    bisection)."""

    def fits_with(k: int) -> bool:
        return fits(replace(settings, grad_checkpointing=True, activation_offload=False, checkpoint_layers=k))

    if layers < 2 or not fits_with(layers - 1):
        return None
    lo, hi = 1, layers - 1  # the answer is in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits_with(mid) else (mid + 1, hi)
    return lo
