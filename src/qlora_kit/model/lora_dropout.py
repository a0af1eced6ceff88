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
memory is worth there), in evaluation (no dropout), without gradients, while a CUDA graph is recorded
(``train.cuda_graphs``: the seed drawn on the host would be frozen into the graph), for DoRA and other LoRA variants
(PEFT feeds them the dropped input directly), and by default inside ``torch.compile``: there PEFT's dropout
runs, and the compiled layer keeps its masks and dropped copies (8.5 GiB of the 8B shape's 31.8 GiB at
4,096 tokens on an H200, run 2026-11-30s). :attr:`LightDropoutLinear.in_compiled` turns on a compile-friendly
form: two custom ops the compiler treats as opaque, pure functions of their inputs (the mask's seed comes
from two CPU scalars, one drawn per forward pass, one per layer, so nothing breaks the graph and a
recompute, by checkpointing or by the compiler's partitioner, draws the same mask). Off: on an H200 (run
2026-11-30u) it took the 8B shape's defaults from 31.9 to 23.3 GiB but ran 6% slower, and 24% slower
under a 16 GiB budget (its ops run outside inductor's fusion, each mask drawn from a new generator).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class LightDropoutLinear(nn.Linear):
    """A LoRA ``lora_A`` projection with its dropout inside (see the module docstring)."""

    dropout_p: float = 0.0
    in_compiled: bool = False
    """Run light inside ``torch.compile`` too (through :func:`dropped_linear`); see the module docstring."""
    seed_base: torch.Tensor | None = None
    """Compiled layers' masks: a CPU int64 scalar shared by the model's layers, drawn from torch's CPU
    generator before each training forward pass (:func:`use_light_dropout`'s pre-hook), so a checkpointed
    recompute, in the same pass, draws the same masks."""
    seed_offset: torch.Tensor | None = None
    """This layer's CPU int64 scalar, mixed with :attr:`seed_base` (:func:`layer_seed`). Tensors, not ints,
    so one compiled graph serves every decoder layer."""
    devices: tuple[str, ...] = ("cuda",)
    """Device types it runs light on. Not the CPU: drawing each mask twice there made a SmolLM2-135M step
    (2 cores, `benchmarks/cpu_step.py`, runs interleaved) 6.44-6.57 s instead of 5.30-5.90 s, and host
    memory is rarely the limit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compiling = torch.compiler.is_compiling()
        light = (
            self.training
            and self.dropout_p > 0
            and x.device.type in self.devices
            and self.bias is None
            and torch.is_grad_enabled()
            and (not compiling or (self.in_compiled and self.seed_base is not None))
            and not (x.is_cuda and torch.cuda.is_current_stream_capturing())  # a graph would freeze the seed
        )
        if not light:
            return F.linear(F.dropout(x, self.dropout_p, self.training), self.weight, self.bias)
        if compiling:
            return _compiled_dropped_linear(x, self)
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


def _compiled_dropped_linear(x: torch.Tensor, layer: LightDropoutLinear) -> torch.Tensor:
    """:class:`_DroppedLinear` for a compiled layer: the inputs in autocast's dtype first (custom ops see
    no autocast), then the opaque op, seeded by the layer's CPU tensors (graph inputs, not constants)."""
    weight = layer.weight
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
    return dropped_linear(x, weight, layer.dropout_p, layer.seed_base, layer.seed_offset)


@torch.library.custom_op("qlora_kit::lora_dropped_linear", mutates_args=())
def dropped_linear(
    x: torch.Tensor, weight: torch.Tensor, p: float, base: torch.Tensor, offset: torch.Tensor
) -> torch.Tensor:
    """``linear(x * mask / (1 - p), weight)``, the mask drawn from :func:`layer_seed` of two CPU int64
    scalars. A pure function of its inputs: the compiler may recompute it (a checkpointed layer does)."""
    return F.linear(x * _keep(x, p, layer_seed(base, offset)), weight)


@dropped_linear.register_fake
def _(
    x: torch.Tensor, weight: torch.Tensor, p: float, base: torch.Tensor, offset: torch.Tensor
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("qlora_kit::lora_dropped_linear_backward", mutates_args=())
def dropped_linear_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    p: float,
    base: torch.Tensor,
    offset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of :func:`dropped_linear` for ``x`` and ``weight``, the mask drawn again."""
    keep = _keep(x, p, layer_seed(base, offset))
    dropped = (x * keep).reshape(-1, x.shape[-1])
    return (grad_out @ weight) * keep, grad_out.reshape(-1, grad_out.shape[-1]).t() @ dropped


@dropped_linear_backward.register_fake
def _(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, p: float, base: torch.Tensor,
      offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return torch.empty_like(x), torch.empty_like(weight)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, weight, ctx.p, base, offset = inputs
    ctx.save_for_backward(x, weight, base, offset)


def _backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, weight, base, offset = ctx.saved_tensors
    grad_x, grad_w = dropped_linear_backward(grad_out, x, weight, ctx.p, base, offset)
    return grad_x, grad_w, None, None, None


dropped_linear.register_autograd(_backward, setup_context=_setup_context)


def layer_seed(base: torch.Tensor, offset: torch.Tensor) -> int:
    """A mask seed from a forward pass's ``base`` and a layer's ``offset`` (CPU int64 scalars), mixed so that
    neighbouring layers' seeds are unrelated."""
    return (int(base) + int(offset) * 0x9E3779B97F4A7C15) % 2**63


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
    changed, base = 0, torch.zeros((), dtype=torch.int64)
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
                lora_a.seed_base, lora_a.seed_offset = base, torch.tensor(changed, dtype=torch.int64)
                module.lora_dropout[name] = nn.Identity()
                changed += 1
    if changed:
        model.register_forward_pre_hook(_new_masks(base))
    return changed


def _new_masks(base: torch.Tensor) -> Any:
    """A forward pre-hook drawing compiled layers' :attr:`~LightDropoutLinear.seed_base` for a training pass
    (only when they run light: otherwise it draws nothing, and the eager numbers stay as they were)."""

    def hook(module: nn.Module, args: Any) -> None:
        if LightDropoutLinear.in_compiled and module.training and torch.is_grad_enabled():
            base.fill_(int(torch.randint(0, 2**62, ())))

    return hook
