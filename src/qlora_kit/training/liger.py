"""Liger-Kernel's fused linear cross-entropy, as the ``fused`` loss uses it: whether it is installed (found
without importing it), importing it, and the output head whose weight it can take.

Liger's kernel is a function of the final hidden states and the head's weight: the model is never patched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

NOT_INSTALLED = "liger_kernel is not installed (`pip install liger-kernel`)"


def _effective_head(head: nn.Module) -> nn.Module:
    """The module a PEFT ``modules_to_save`` wrapper forwards to (the trainable copy when active)."""
    from peft.utils.other import ModulesToSaveWrapper

    if not isinstance(head, ModulesToSaveWrapper):
        return head
    active = head.active_adapters
    if head.disable_adapters or not active or active[0] not in head.modules_to_save:
        return head.original_module
    return head.modules_to_save[active[0]]


def plain_linear(head: nn.Module) -> nn.Linear | str:
    """The plain ``nn.Linear`` the fused kernel can take the weight of, or why there is none."""
    linear = _effective_head(head)
    if type(linear) is not nn.Linear:  # LoRA layers, bitsandbytes Linear4bit/8bit, custom heads
        what = "has LoRA on it" if hasattr(linear, "lora_A") else f"is a {type(linear).__qualname__}"
        return f"the output head {what}, not a plain torch.nn.Linear (the chunked loss supports it)"
    if linear._forward_hooks or linear._forward_pre_hooks or hasattr(linear, "_hf_hook"):
        return (
            "the output head has forward hooks (e.g. accelerate's offloading), which the kernel would bypass"
        )
    return linear


def liger() -> Callable[..., torch.Tensor] | str:
    """Liger's ``liger_fused_linear_cross_entropy``, imported, or why it cannot be."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "liger_kernel":
            return NOT_INSTALLED
        return f"liger_kernel cannot be imported: it needs {exc.name!r}, which is not installed"
    except Exception as exc:  # e.g. triton missing or broken: any import failure means no fused kernel
        return f"liger_kernel cannot be imported ({type(exc).__name__}: {exc})"
    return liger_fused_linear_cross_entropy


def liger_findable() -> str | None:
    """Why liger_kernel cannot be imported, as far as finding it tells (None: it is installed). The import
    itself (triton's with it: ~0.5 s) waits for the first pass large enough for the kernel; a W1 or quickstart
    run never has one."""
    import importlib.util

    for name in ("liger_kernel", "triton"):
        if importlib.util.find_spec(name) is None:
            if name == "liger_kernel":
                return NOT_INSTALLED
            return f"liger_kernel cannot be imported: it needs {name!r}, which is not installed"
    return None
