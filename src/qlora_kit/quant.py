"""Quantization: the config union -> ``transformers.BitsAndBytesConfig``, and guards around bitsandbytes.

This is the only module that touches bitsandbytes' quantization internals.
"""

from __future__ import annotations

from typing import Any


def _linear4bit_modules(model: Any) -> list[Any]:
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:  # bitsandbytes missing: nothing can be 4-bit
        return []
    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def keep_4bit_weights_trainable(model: Any) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference, and undo any repacking done.

    Why: on a CPU with AVX512-BF16, ``Linear4bit.forward`` in eval mode under ``no_grad`` converts its
    weight in place to a CPU-packed layout (bitsandbytes 0.50). Every later forward, training included,
    then goes through ``bitsandbytes::gemv_4bit``, which has no autograd kernel: LoRA gradients come out
    wrong, silently (PyTorch only warns once). Evaluation must never leave that layout behind.

    Returns the number of layers whose weights were converted back.
    """
    from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

    restored = 0
    for module in _linear4bit_modules(model):
        module.support_avx512bf16_for_cpu = False  # never take the packing branch again
        weight = module.weight
        state = getattr(weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
            module.quant_state = weight.quant_state
            restored += 1
    return restored
