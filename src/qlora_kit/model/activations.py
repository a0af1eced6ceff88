"""The tanh-approximated GELU as one fused kernel where a model spells it out operation by operation.

Why: GPT-2's ``gelu_new`` (transformers' ``NewGELUActivation``, also ``FastGELUActivation``) computes
``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` as eight elementwise operations, each a kernel that
reads and writes the whole MLP activation, and autograd adds a dozen more in the backward. PyTorch's
``gelu(approximate="tanh")`` is the same function in one kernel each way, computed in float32 inside the
kernel (the op-by-op version rounds after every operation in 16 bits). W1's profile (GPU call 48, steps
101-110 of distilgpt2's shape): elementwise kernels were most of the recorded layers' device time.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)

SPELLED_OUT = ("NewGELUActivation", "FastGELUActivation")
"""transformers' modules that compute the tanh-approximated GELU operation by operation."""


class FusedActivations:
    """Swaps each spelled-out tanh GELU in a model for transformers' ``GELUTanh`` (one fused kernel);
    :meth:`remove` puts the originals back."""

    def __init__(self, model: nn.Module):
        from transformers.activations import GELUTanh

        self._swapped: list[tuple[nn.Module, str, nn.Module]] = []
        for parent in model.modules():
            for name, child in parent.named_children():
                if _spelled_out(child):
                    setattr(parent, name, GELUTanh())
                    self._swapped.append((parent, name, child))

    @property
    def count(self) -> int:
        """How many activation modules were swapped."""
        return len(self._swapped)

    def remove(self) -> None:
        """Give the model its own activation modules back."""
        for parent, name, original in self._swapped:
            setattr(parent, name, original)
        self._swapped = []


class LeanForward:
    """What :func:`lean_forward` changed in a model: the fused GELUs and the norms' output dtype."""

    def __init__(self, model: nn.Module, autocast: bool = True):
        from qlora_kit.model.norms import NormsInModelDtype

        self.activations = FusedActivations(model)
        # without autocast a 16-bit norm returns 16 bits already: nothing to hook
        self.norms = NormsInModelDtype(model if autocast else nn.Module())

    def remove(self) -> None:
        """Give the model its own modules and norms' outputs back."""
        self.activations.remove()
        self.norms.remove()


def lean_forward(model: nn.Module, autocast: bool) -> LeanForward:
    """Fewer elementwise kernels in ``model``'s training forward (and backward), for the run: spelled-out
    tanh GELUs as one fused kernel each (this module), and, where the run uses ``autocast``, 16-bit norms
    returning their own dtype (:mod:`~qlora_kit.model.norms`). Says what it changed; ``remove()`` undoes
    both."""
    lean = LeanForward(model, autocast)
    if lean.activations.count:
        logger.info("activations: %d tanh-approximated GELUs run as one fused kernel each (the same function, "
                    "rounded once instead of after every operation)", lean.activations.count)  # fmt: skip
    if lean.norms.count:
        logger.info("norms: %d LayerNorms return the model's 16-bit dtype under autocast, not float32 "
                    "(no casts around every layer; the residual stream stays 16-bit)", lean.norms.count)  # fmt: skip
    return lean


def _spelled_out(module: Any) -> bool:
    if type(module).__name__ in SPELLED_OUT:
        return True
    # GELUTanh(use_gelu_tanh_python=True) is the op-by-op formula under the fused module's name
    act = getattr(module, "act", None)
    return type(module).__name__ == "GELUTanh" and getattr(act, "__name__", "") == "_gelu_tanh_python"
