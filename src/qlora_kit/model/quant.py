"""Quantization kinds (the `quant` section): how the frozen base model's weights are stored.

Each kind is a :class:`Quantization` registered in :data:`qlora_kit.registry.quantization`. The
:class:`~qlora_kit.model.loading.ModelLoader` asks it for extra ``from_pretrained`` arguments, then
lets it change the loaded model (:meth:`Quantization.after_load`); a plugin kind can do either.
Built-ins: ``bnb_4bit`` (QLoRA), ``bnb_8bit`` (LLM.int8()), ``none``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from qlora_kit.compat import fsdp_launched, linear4bit_modules, undo_cpu_weight_packing
from qlora_kit.errors import ConfigError, ModelLoadError
from qlora_kit.model.compute_dtype import resolve_compute_dtype
from qlora_kit.registry import quantization
from qlora_kit.strict import ComputeDType, StrictModel

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


class Quantization:
    """Base of quantization kinds. Override :meth:`load_kwargs` and/or :meth:`after_load`.

    Args:
        config: the validated `quant` section (this kind's ``Config``).
    """

    class Options(StrictModel):
        compute_dtype: ComputeDType = "auto"
        """dtype of matmuls and of every parameter that is not quantized (embeddings, norms, head). `auto`:
        bfloat16 where the device computes it natively, else float16 (older GPUs) or float32 (CPUs)."""

    uses_bitsandbytes = False
    """Whether the kind needs a working bitsandbytes backend on the device (checked before loading)."""

    def __init__(self, config: Any):
        self.config = config

    @property
    def compute_dtype(self) -> torch.dtype:
        """The torch dtype of computation and of the non-quantized parameters (`auto` resolved for this
        machine's default device; :class:`~qlora_kit.model.loading.ModelLoader` resolves it for its own)."""
        return torch_dtype(self.compute_dtype_name)

    @property
    def compute_dtype_name(self) -> str:
        """The configured compute dtype's name, `auto` resolved as :attr:`compute_dtype` says."""
        return resolve_compute_dtype(self.config.compute_dtype)

    def check(self, device: torch.device) -> None:
        """Fail early when this kind cannot run on ``device`` (before any weight is read)."""
        check_dtype_supported(resolve_compute_dtype(self.config.compute_dtype, device), device)
        if self.uses_bitsandbytes:
            check_bitsandbytes(self.config.kind, device)

    def load_kwargs(self, loader: Any) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments (e.g. ``quantization_config``). ``loader`` is the
        :class:`~qlora_kit.model.loading.ModelLoader`, for the source and the unquantized defaults."""
        return {}

    def after_load(self, model: Any) -> Any:
        """Change the loaded model (e.g. replace layers); returns the model to train."""
        return model


@quantization.register("bnb_4bit")
class Bnb4bit(Quantization):
    """4-bit quantization of linear layers through bitsandbytes (QLoRA)."""

    class Options(Quantization.Options):
        quant_type: Literal["nf4", "fp4"] = "nf4"
        """NormalFloat4 (best for normally distributed weights) or plain FP4."""
        double_quant: bool = True
        """Quantize the per-block absmax constants too (saves ~0.4 bits per parameter)."""
        quant_storage: Literal["auto", "uint8", "bfloat16", "float16", "float32"] = "auto"
        """Container dtype of the packed 4-bit weights. `auto`: uint8, or the compute dtype under FSDP
        (which can only shard floating-point tensors)."""
        skip_modules: list[str] = Field(default_factory=list)
        """Module names kept in 16 bits besides the output head (which is never quantized)."""

    uses_bitsandbytes = True

    def load_kwargs(self, loader: Any) -> dict[str, Any]:
        from transformers import BitsAndBytesConfig

        cfg = self.config
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=cfg.quant_type,
                bnb_4bit_use_double_quant=cfg.double_quant,
                bnb_4bit_compute_dtype=self.compute_dtype,
                bnb_4bit_quant_storage=torch_dtype(self.storage_dtype()),
                llm_int8_skip_modules=loader.unquantized_modules(cfg.skip_modules),
            )
        }

    def storage_dtype(self) -> str:
        """The configured ``quant_storage``, with `auto` resolved for this launch."""
        if self.config.quant_storage != "auto":
            return self.config.quant_storage
        return self.compute_dtype_name if fsdp_launched() else "uint8"


@quantization.register("bnb_8bit")
class Bnb8bit(Quantization):
    """LLM.int8() quantization of linear layers through bitsandbytes."""

    class Options(Quantization.Options):
        threshold: float = 6.0
        """Outlier threshold of LLM.int8()."""
        skip_modules: list[str] = Field(default_factory=list)
        """Module names kept in 16 bits besides the output head."""

    uses_bitsandbytes = True

    def load_kwargs(self, loader: Any) -> dict[str, Any]:
        from transformers import BitsAndBytesConfig

        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_8bit=True,
                llm_int8_threshold=self.config.threshold,
                llm_int8_skip_modules=loader.unquantized_modules(self.config.skip_modules),
            )
        }


@quantization.register("none")
class NoQuant(Quantization):
    """No quantization: plain LoRA on a 16- or 32-bit base."""


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


def check_bitsandbytes(kind: str, device: torch.device) -> None:
    """Fail early when ``quant.kind`` asks for bitsandbytes where it cannot run on ``device``.

    Imports bitsandbytes and quantizes a tiny tensor on ``device``: that is the only reliable test
    that a backend (CUDA, CPU, XPU, ...) is installed and works there.

    Raises:
        ModelLoadError: naming ``quant.kind``, the device and the reason.
    """
    try:
        import bitsandbytes.functional as bnb_f
    except Exception as exc:  # ImportError, or a broken native library raising at import
        raise ModelLoadError(
            f"quant.kind={kind}: bitsandbytes cannot be imported ({exc}); "
            "install it (`pip install bitsandbytes`) or set quant.kind=none"
        ) from exc
    try:
        _probe_bitsandbytes(bnb_f, device)
    except Exception as exc:
        raise ModelLoadError(
            f"quant.kind={kind}: bitsandbytes has no working backend for {device} ({exc}); "
            "use a supported device or set quant.kind=none"
        ) from exc


def _probe_bitsandbytes(bnb_functional: Any, device: torch.device) -> None:
    weight = torch.ones(64, 64, device=device)
    packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4")
    bnb_functional.dequantize_4bit(packed, state)


def keep_4bit_weights_trainable(model: Any) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference, and undo any repacking done.

    Why: on a CPU with AVX512-BF16, ``Linear4bit.forward`` in eval mode under ``no_grad`` converts its
    weight in place to a CPU-packed layout (bitsandbytes 0.50). Every later forward, training included,
    then goes through ``bitsandbytes::gemv_4bit``, which has no autograd kernel: LoRA gradients come out
    wrong, silently (PyTorch only warns once). Evaluation must never leave that layout behind.

    Returns the number of layers whose weights were converted back.
    """
    return sum(undo_cpu_weight_packing(module) for module in linear4bit_modules(model))
