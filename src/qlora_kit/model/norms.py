"""Norm layers' outputs in the model's own 16-bit dtype under autocast, as Llama-family norms give them.

Why: autocast runs ``layer_norm`` in float32 and returns float32, though the model is loaded in bfloat16.
Downstream, each 4-bit layer casts that input to bfloat16 and its output back to float32 (bitsandbytes
returns the input's dtype), the LoRA matmuls cast it again, attention casts q, k and v, and the residual
stream turns float32 after the first MLP: ~150 casts per pass of GPT-2's shape, each a kernel over a whole
activation, forward and backward (W1: 148 copy kernels a step, call 48's profile). Every matmul and the
attention already ran in bfloat16, so the values they see do not change; what changes is that the sums
around them (a LoRA output onto its base output, the residual stream) are rounded to bfloat16, as in a
model whose norms return their input's dtype (``LlamaRMSNorm``, Mistral, Qwen, ...).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NORMS = (nn.LayerNorm,)
"""Norm modules that autocast runs in float32 (``RMSNorm`` implementations cast back themselves)."""


class NormsInModelDtype:
    """Forward hooks casting each 16-bit :data:`NORMS` module's float32 output (under autocast) to its
    weight's dtype; :meth:`remove` takes them off."""

    def __init__(self, model: nn.Module):
        self._hooks = [
            module.register_forward_hook(_to_weight_dtype)
            for module in model.modules()
            if isinstance(module, NORMS) and _sixteen_bit(getattr(module, "weight", None))
        ]

    @property
    def count(self) -> int:
        """How many norm modules are hooked."""
        return len(self._hooks)

    def remove(self) -> None:
        """Take the hooks off: the norms return what autocast gives again."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def _sixteen_bit(weight: Any) -> bool:
    return isinstance(weight, torch.Tensor) and weight.dtype in (torch.bfloat16, torch.float16)


def _to_weight_dtype(module: nn.Module, args: Any, output: Any) -> Any:
    dtype = module.weight.dtype
    if isinstance(output, torch.Tensor) and output.dtype == torch.float32:
        return output.to(dtype)
    return output
