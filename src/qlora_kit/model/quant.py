"""Quantization: the config union -> ``transformers.BitsAndBytesConfig``, and guards around bitsandbytes.

This is the only module that touches bitsandbytes' quantization internals.
"""

from __future__ import annotations

from typing import Any

import torch

from qlora_kit.errors import ConfigError, ModelLoadError

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "uint8": torch.uint8,
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name`` in configs (`bfloat16`, `float16`, `float32`, `uint8`).

    Raises:
        ConfigError: ``name`` is not one of them.
    """
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError([("dtype", f"unknown dtype {name!r}; known: {', '.join(_DTYPES)}")]) from None


def build_bnb_config(quant_cfg: Any) -> Any:
    """The ``transformers.BitsAndBytesConfig`` for a `quant` section, or None for ``kind: none``.

    ``skip_modules`` are added to the modules transformers already keeps unquantized only by the
    loader (:func:`qlora_kit.model.loading.ModelLoader`), which knows the model's output head; here they
    are passed as given.
    """
    if quant_cfg.kind == "none":
        return None
    from transformers import BitsAndBytesConfig

    skip = list(quant_cfg.skip_modules) or None
    if quant_cfg.kind == "bnb_8bit":
        return BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_threshold=quant_cfg.threshold, llm_int8_skip_modules=skip
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_cfg.quant_type,
        bnb_4bit_use_double_quant=quant_cfg.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(quant_cfg.compute_dtype),
        bnb_4bit_quant_storage=torch_dtype(quant_cfg.quant_storage),
        llm_int8_skip_modules=skip,
    )


def check_dtype_supported(name: str, device: torch.device, field: str = "quant.compute_dtype") -> None:
    """Fail early when ``device`` cannot compute in dtype ``name`` (bf16 on a pre-Ampere GPU).

    Raises:
        ModelLoadError: naming ``field``, the dtype and the device, with the dtype to use instead.
    """
    if device.type == "cuda" and name == "bfloat16" and not torch.cuda.is_bf16_supported():
        gpu = torch.cuda.get_device_name(device)
        raise ModelLoadError(
            f"{field}: bfloat16 is not supported on {device} ({gpu}); set {field}=float16 (or float32)"
        )


def check_bitsandbytes(quant_cfg: Any, device: torch.device) -> None:
    """Fail early when ``quant.kind`` asks for bitsandbytes where it cannot run on ``device``.

    Imports bitsandbytes and quantizes a tiny tensor on ``device``: that is the only reliable test
    that a backend (CUDA, CPU, XPU, ...) is installed and works there.

    Raises:
        ModelLoadError: naming ``quant.kind``, the device and the reason.
    """
    if quant_cfg.kind == "none":
        return
    try:
        import bitsandbytes.functional as bnb_f
    except Exception as exc:  # ImportError, or a broken native library raising at import
        raise ModelLoadError(
            f"quant.kind={quant_cfg.kind}: bitsandbytes cannot be imported ({exc}); "
            "install it (`pip install bitsandbytes`) or set quant.kind=none"
        ) from exc
    try:
        _probe_bitsandbytes(bnb_f, device)
    except Exception as exc:
        raise ModelLoadError(
            f"quant.kind={quant_cfg.kind}: bitsandbytes has no working backend for {device} ({exc}); "
            "use a supported device or set quant.kind=none"
        ) from exc


def _probe_bitsandbytes(bnb_functional: Any, device: torch.device) -> None:
    weight = torch.ones(64, 64, device=device)
    packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4")
    bnb_functional.dequantize_4bit(packed, state)


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
    modules = _linear4bit_modules(model)
    if not modules:  # also the case when bitsandbytes is not installed
        return 0
    from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

    restored = 0
    for module in modules:
        module.support_avx512bf16_for_cpu = False  # never take the packing branch again
        weight = module.weight
        state = getattr(weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
            module.quant_state = weight.quant_state
            restored += 1
    return restored
