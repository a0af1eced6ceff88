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

    offload_layers: int | None = None
    """With offload: how many checkpointed layers, the first ones, send their inputs to host memory (None:
    all). The others keep theirs on the device: the fewest that fit pin the least host memory."""

    def offloaded(self, layers: int) -> int:
        """How many of the model's ``layers`` decoder layers offload their inputs under these settings."""
        if not self.activation_offload:
            return 0
        k = self.checkpointed(layers)
        return k if self.offload_layers is None else min(self.offload_layers, k)

    def describe_offload(self, layers: int) -> str:
        """``on``, ``off`` or ``on for M of N layers``: the offload part of a log line."""
        return _some_of(self.offloaded(layers), layers)

    def checkpointed(self, layers: int) -> int:
        """How many of the model's ``layers`` decoder layers these settings checkpoint."""
        if not self.grad_checkpointing:
            return 0
        return layers if self.checkpoint_layers is None else min(self.checkpoint_layers, layers)

    def describe(self, layers: int) -> str:
        """``on``, ``off`` or ``on for K of N layers``: the checkpointing part of a log line."""
        return _some_of(self.checkpointed(layers), layers)

    def can_lean_more(self) -> bool:
        """Whether some layer keeps more than it could: checkpointing off or for some layers only, or with
        offload, offload for some layers only."""
        some_kept = not self.grad_checkpointing or self.checkpoint_layers is not None
        return some_kept or (self.activation_offload and self.offload_layers is not None)

    @property
    def compiles(self) -> bool:
        """The decoder layers run compiled (compilation is not combined with activation offload)."""
        return self.compiled and not self.activation_offload


def _some_of(k: int, layers: int) -> str:
    return "off" if k == 0 else "on" if k == layers else f"on for {k} of {layers} layers"


@dataclass(frozen=True)
class Adapter:
    """What the planner needs of the `adapter` and optimizer settings."""

    r: int = 16
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    modules_to_save: tuple[str, ...] = ()
    optimizer: str = "adamw_torch"
    light_dropout: bool = True
    """LoRA dropout inside ``lora_A``, keeping no dropped copies (what ``AdapterBuilder`` installs; it falls
    back to PEFT's dropout in compiled layers unless ``light_in_compiled``). False: PEFT's own dropout modules."""
    light_in_compiled: bool = False
    """The light dropout runs in compiled layers too, with hashed masks (``LightDropoutLinear.in_compiled``)."""


def layouts(checkpointing: bool | str, offload: bool | str) -> list[tuple[bool, bool, bool]]:
    """``(checkpointing, offload, some layers only)`` layouts that `train.grad_checkpointing` and
    `train.activation_offload` (``True``, ``False`` or ``"auto"``) allow, fastest first: none; the fewest
    layers checkpointed that fit (`auto` checkpointing only); every layer; every layer checkpointed and the
    fewest offloaded that fit (`auto` offload only); every layer offloaded. "Some" applies to the last knob
    that is on; :func:`fewest_layers` searches the count."""
    order = (
        (False, False, False),
        (True, False, True),
        (True, False, False),
        (True, True, True),
        (True, True, False),
    )
    return [
        (c, o, some)
        for c, o, some in order
        if checkpointing in ("auto", c)
        and offload in ("auto", o)
        and (not some or (offload if o else checkpointing) == "auto")
    ]


def some_layers(settings: Settings, k: int) -> Settings:
    """``settings`` with the some-layers count of its last knob that is on (offload, else checkpointing) at
    ``k``: the first ``k`` decoder layers offload (every layer checkpointed) or are checkpointed."""
    if settings.activation_offload:
        return replace(settings, grad_checkpointing=True, checkpoint_layers=None, offload_layers=k)
    return replace(settings, grad_checkpointing=True, checkpoint_layers=k, offload_layers=None)


def fewest_layers(fits: Any, settings: Settings, layers: int) -> int | None:
    """The fewest decoder layers (1 to ``layers - 1``) to checkpoint, or with offload to offload, for
    ``fits(some_layers(settings, k))`` to hold, or None when some layers are not enough (memory falls as
    more layers are checkpointed or offloaded: bisection)."""

    def fits_with(k: int) -> bool:
        return fits(some_layers(settings, k))

    if layers < 2 or not fits_with(layers - 1):
        return None
    lo, hi = 1, layers - 1  # the answer is in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits_with(mid) else (mid + 1, hi)
    return lo
