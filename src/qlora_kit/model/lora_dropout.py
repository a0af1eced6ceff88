"""LoRA dropout that keeps no dropped-out copy of its input for the backward pass.

PEFT computes ``lora_B(lora_A(dropout(x)))``: the dropout keeps its mask and ``lora_A`` keeps the
dropped-out input, a new tensor as wide as ``x``, for every adapted layer, even where several of them
(q, k and v; gate and up) read the same ``x``. With dropout 0 they all keep that one ``x``. For the
Llama-3-8B shape that is 256,360 bytes per token and layer against 184,680 (``planning.memory``).

:func:`use_light_dropout` moves the dropout inside ``lora_A``: one autograd function draws the mask from
a seed, multiplies and projects, and keeps only ``x`` (shared) and the seed; the backward pass draws the
same mask again from the seed. Same distribution as ``nn.Dropout`` (keep with probability ``1 - p``,
scale by ``1 / (1 - p)``), drawn from another stream: a seed taken from torch's CPU generator, so runs
stay reproducible from ``seed``, resumed runs match (the CPU generator is checkpointed), and a checkpointed
layer's recompute, which restores the CPU generator, draws the same masks.

Not used where it would not pay or not work: on the CPU (drawing masks twice costs more than the
memory is worth there), in evaluation (no dropout), without gradients, inside ``torch.compile`` (the compiler makes its own choice of what to keep; it would also break the graph on the
seed), for DoRA and other LoRA variants (PEFT feeds them the dropped input directly).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class LightDropoutLinear(nn.Linear):
    """A LoRA ``lora_A`` projection with its dropout inside (see the module docstring)."""

    dropout_p: float = 0.0
    devices: tuple[str, ...] = ("cuda",)
    """Device types it runs light on. Not the CPU: drawing each mask twice there made a SmolLM2-135M step
    (2 cores, `benchmarks/cpu_step.py`, runs interleaved) 6.44-6.57 s instead of 5.30-5.90 s, and host
    memory is rarely the limit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        light = (
            self.training
            and self.dropout_p > 0
            and x.device.type in self.devices
            and self.bias is None
            and torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
        )
        if not light:
            return F.linear(F.dropout(x, self.dropout_p, self.training), self.weight, self.bias)
        seed = int(torch.randint(0, 2**62, ()))  # CPU generator: no device sync
        return _DroppedLinear.apply(x, self.weight, self.dropout_p, seed)


class _DroppedLinear(torch.autograd.Function):
    """``linear(x * mask / (1 - p), weight)`` keeping ``x`` and the mask's seed, not the product."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, p: float, seed: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.p, ctx.seed, ctx.device_type = p, seed, x.device.type
        ctx.autocast = torch.is_autocast_enabled(ctx.device_type), torch.get_autocast_dtype(ctx.device_type)
        return F.linear(x * _keep(x, p, seed), weight)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        enabled, dtype = ctx.autocast
        keep = _keep(x, ctx.p, ctx.seed)
        with torch.autocast(ctx.device_type, dtype=dtype, enabled=enabled):  # the forward's precision
            grad_x = (grad_out @ weight).to(x.dtype) * keep if ctx.needs_input_grad[0] else None
            grad_w = None
            if ctx.needs_input_grad[1]:
                dropped = (x * keep).reshape(-1, x.shape[-1])
                grad_w = (grad_out.reshape(-1, grad_out.shape[-1]).t() @ dropped).to(weight.dtype)
        return grad_x, grad_w, None, None


def _keep(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """The dropout mask for ``x`` drawn from ``seed``: 0 or ``1 / (1 - p)`` in ``x``'s dtype."""
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    keep = torch.empty_like(x).bernoulli_(1 - p, generator=generator)
    return keep.mul_(1 / (1 - p))


LIGHT_MIN_HIDDEN = 2048
"""Models at least this wide get the light dropout (:func:`use_light_dropout`): their activations are what
limits a step's length. Narrower ones keep PEFT's dropout: their dropped copies are small and their steps
are bound by host work, which the extra autograd function per adapter would add to (the threshold of
``train.compile: auto`` too)."""


def hidden_size(config: Any) -> int:
    """The width of a transformers model config (``hidden_size``, GPT-2's ``n_embd``; 0 if neither)."""
    return int(getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or 0)


def use_light_dropout(model: nn.Module, min_hidden: int | None = None) -> int:
    """Move the dropout of every plain LoRA ``lora_A`` linear of ``model`` inside it
    (:class:`LightDropoutLinear`) if the model is at least ``min_hidden`` wide (default
    :data:`LIGHT_MIN_HIDDEN`); returns how many were changed. Parameters, state-dict keys and the saved
    adapter are unchanged."""
    from peft.tuners.lora import LoraLayer

    config = getattr(model, "config", None)
    if hidden_size(config) < (LIGHT_MIN_HIDDEN if min_hidden is None else min_hidden):
        return 0
    changed = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        variants = getattr(module, "lora_variant", {}) or {}
        for name, dropout in list(module.lora_dropout.items()):
            lora_a = module.lora_A[name] if name in module.lora_A else None  # noqa: SIM401 (a ModuleDict)
            plain = type(lora_a) is nn.Linear and lora_a.bias is None and name not in variants
            if plain and isinstance(dropout, nn.Dropout) and dropout.p > 0 and not module.use_dora.get(name):
                lora_a.__class__ = LightDropoutLinear
                lora_a.dropout_p = dropout.p
                module.lora_dropout[name] = nn.Identity()
                changed += 1
    return changed
