"""A quantization kind, `mixed_4_8`: NF4 (4-bit) for most linear layers, LLM.int8() (8-bit) for the few
named in `eight_bit_modules` (layers whose 4-bit rounding hurts most, e.g. Llama's `down_proj`).

It is built on the library's own ``bnb_4bit`` kind (composition, not inheritance): the base loads through
transformers' ``BitsAndBytesConfig`` 4-bit with the 8-bit layers skipped, so they arrive in 16 bits; then
:meth:`MixedQuantization.after_load` replaces each of them by a bitsandbytes ``Linear8bitLt``. PEFT's LoRA
layers wrap both kinds of layer, and the merged export dequantizes both (``compat.dequantize_bnb_layer``).

    quant: {kind: mixed_4_8, eight_bit_modules: [down_proj], quant_type: nf4, compute_dtype: bfloat16}
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from qlora_kit.errors import ConfigError
from qlora_kit.model.quant import Bnb4bit, Quantization
from qlora_kit.registry import quantization


def matches(name: str, pattern: str) -> bool:
    """PEFT's rule for a module name in a list: the full dotted name, or its last components."""
    return name == pattern or name.endswith("." + pattern)


@quantization.register("mixed_4_8")
class MixedQuantization(Quantization):
    """NF4 4-bit linear layers, except `eight_bit_modules`, which are LLM.int8() 8-bit (bitsandbytes)."""

    class Options(Bnb4bit.Options):
        eight_bit_modules: list[str] = Field(min_length=1)
        """Linear layers (names or dotted suffixes, e.g. `down_proj`) stored in 8 bits instead of 4."""
        threshold: float = Field(default=6.0, ge=0)
        """Outlier threshold of LLM.int8() for the 8-bit layers."""

    uses_bitsandbytes = True

    def load_kwargs(self, loader: Any) -> dict[str, Any]:
        """``bnb_4bit``'s arguments, with the 8-bit layers added to its skip list (loaded in 16 bits)."""
        self._check_names(loader.skeleton())
        options = self.config.model_dump(exclude={"kind", "eight_bit_modules", "threshold"})
        options["skip_modules"] = [*options["skip_modules"], *self.config.eight_bit_modules]
        return quantization.make("bnb_4bit", **options).build().load_kwargs(loader)

    def after_load(self, model: Any) -> Any:
        """Replace every linear layer named in `eight_bit_modules` by an 8-bit ``Linear8bitLt``."""
        for name, module in list(model.named_modules()):
            if type(module) is nn.Linear and self._is_eight_bit(name):  # 4-bit layers subclass nn.Linear
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, self._int8_linear(module))
        # PEFT wraps a Linear8bitLt in its 8-bit LoRA layer only when the model says it holds 8-bit layers
        model.is_loaded_in_8bit = True
        return model

    def _is_eight_bit(self, name: str) -> bool:
        return any(matches(name, pattern) for pattern in self.config.eight_bit_modules)

    def _int8_linear(self, layer: nn.Linear) -> nn.Module:
        import bitsandbytes as bnb

        device = layer.weight.device
        int8 = bnb.nn.Linear8bitLt(
            layer.in_features, layer.out_features, bias=layer.bias is not None,
            has_fp16_weights=False, threshold=self.config.threshold, device="meta",
        )  # fmt: skip
        # Int8Params quantizes when moved from the CPU to a device (the CPU included): start on the CPU.
        weight = layer.weight.detach().to("cpu", torch.float16)
        int8.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False).to(device)
        if layer.bias is not None:
            int8.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        return int8

    def _check_names(self, skeleton: nn.Module) -> None:
        """Every name in `eight_bit_modules` must match a linear layer (a typo would silently keep 4 bits)."""
        linear = [n for n, m in skeleton.named_modules() if isinstance(m, nn.Linear)]
        for pattern in self.config.eight_bit_modules:
            if not any(matches(n, pattern) for n in linear):
                leaves = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in linear}))
                message = f"{pattern!r} matches no linear layer; linear layers: {leaves}"
                raise ConfigError([("quant.eight_bit_modules", message)])
