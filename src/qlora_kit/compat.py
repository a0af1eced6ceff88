"""Every use of a private or version-specific API of torch, transformers, peft, bitsandbytes and accelerate.

Each function names the versions it was written and tested against. When an upgrade breaks one, this
is the only file to change. Imports are lazy: optional packages are needed only by what uses them.

Written against: torch 2.11-2.13, transformers 5.x (5.17 on the GPU machine, 5.x here), peft 0.21,
bitsandbytes 0.50, accelerate 1.14-1.15.
"""

from __future__ import annotations

from typing import Any

import torch

# ------------------------------------------------------------------------------------------ torch


def fused_adamw_devices() -> set[str]:
    """Device types with a fused AdamW kernel (torch 2.4+ private helper; CUDA, and CPU since 2.4)."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    return set(_get_fused_kernels_supported_devices())


# ----------------------------------------------------------------------------------- transformers


def decoder_layers(model: Any) -> list[Any]:
    """The decoder layers of a transformers model (PEFT- or DDP-wrapped or not), in order: transformers 5.x
    makes them subclass ``GradientCheckpointingLayer``, whose forward calls
    ``self._gradient_checkpointing_func(...)`` when its ``gradient_checkpointing`` flag is on."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def attn_implementation(model: Any) -> str | None:
    """The attention implementation a loaded model uses (transformers 5 keeps it in the private
    ``config._attn_implementation``; there is no public accessor)."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None)


def modules_kept_unquantized(skeleton: Any) -> list[str]:
    """The module names transformers keeps in 16 bits when quantizing (the output head and tied
    weights): ``transformers.quantizers.base.get_keys_to_not_convert`` (transformers 5.x)."""
    from transformers.quantizers.base import get_keys_to_not_convert

    return list(get_keys_to_not_convert(skeleton))


# ----------------------------------------------------------------------------------- bitsandbytes


def linear4bit_modules(model: Any) -> list[Any]:
    """The bitsandbytes ``Linear4bit`` modules of ``model`` (none when bitsandbytes is missing)."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def undo_cpu_weight_packing(module: Any) -> bool:
    """Stop ``module`` (a ``Linear4bit``) from repacking its weight for CPU inference, and undo a
    repacking already done. Returns whether a weight was converted back.

    bitsandbytes 0.50: on a CPU with AVX512-BF16, ``Linear4bit.forward`` in eval mode under ``no_grad``
    converts the weight in place to a layout flagged ``quant_state.packing_format_for_cpu``, guarded by
    the attribute ``support_avx512bf16_for_cpu``; ``_convert_weight_packed_for_cpu_inverse`` undoes it.
    """
    module.support_avx512bf16_for_cpu = False  # never take the packing branch again
    weight = module.weight
    state = getattr(weight, "quant_state", None)
    if state is None or not getattr(state, "packing_format_for_cpu", False):
        return False
    from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

    weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
    module.quant_state = weight.quant_state
    return True


def dequantize_bnb_layer(module: Any) -> torch.Tensor | None:
    """The dequantized ``[out, in]`` weight of a bitsandbytes 4-bit or 8-bit linear layer (None for
    any other module).

    bitsandbytes 0.50: after a forward pass an 8-bit layer's row scales move from ``weight.SCB`` to
    ``module.state.SCB``.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return None
    if isinstance(module, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
    if isinstance(module, bnb.nn.Linear8bitLt):
        scales = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
        return bnb.functional.int8_vectorwise_dequant(module.weight.data, scales)
    return None


# ------------------------------------------------------------------------------------- accelerate


def unregister_checkpointed_object(accelerator: Any, obj: Any) -> None:
    """Undo ``accelerator.register_for_checkpointing(obj)`` (accelerate 1.x has no public way: the
    objects live in the private list ``_custom_objects``)."""
    accelerator._custom_objects = [o for o in accelerator._custom_objects if o is not obj]


def reset_stale_accelerate_state(cpu: bool, mixed_precision: str) -> None:
    """Reset accelerate's process-wide state when a single-process run needs another device or
    precision than an earlier Accelerator of this process (accelerate 1.x keeps them in the private
    ``_shared_state`` dicts and would raise, or silently keep the old device). A distributed launch is
    left alone."""
    from accelerate.state import AcceleratorState, PartialState

    if not PartialState._shared_state or PartialState().num_processes != 1:
        return
    stale = (PartialState().device.type == "cpu") != cpu
    if AcceleratorState._shared_state:
        stale = stale or AcceleratorState().mixed_precision != mixed_precision
    if stale:
        AcceleratorState._reset_state(reset_partial_state=True)


def fsdp_launched() -> bool:
    """True under ``accelerate launch`` with an FSDP config, read before any Accelerator exists
    (accelerate 1.x's launcher sets ``ACCELERATE_USE_FSDP``)."""
    import os

    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")
