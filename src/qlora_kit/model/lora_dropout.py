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
(PEFT feeds them the dropped input directly).

Inside ``torch.compile`` a seed drawn on the host per call would break the graph, and PEFT's dropout there
keeps its masks and dropped copies (8.5 GiB of the 8B shape's 31.8 GiB at 4,096 tokens on an H200, run
2026-11-30s). :attr:`LightDropoutLinear.in_compiled` (on by default) gives compiled layers a mask from
a hash instead (:func:`hashed_keep`): integer arithmetic on each element's index and a seed tensor (one
drawn per forward pass, one per linear), tagged for selective checkpointing so the backward pass recomputes
mask and product from ``x`` and the layer keeps only ``x``; a checkpointed recompute gets the same masks.
Measured so far: one compiled ``lora_A`` step on an H200 (``benchmarks/dropout_kernels.py``, 4,096 x 14,336,
call 54) 1.19 ms against PEFT's 1.29; in the 8B model (run 2026-12-02c) a graph break on the CUDA-graph
capture check sent PEFT's 4-bit LoRA forward back to eager (6,736 tokens/s against 12,040), fixed since,
and without the checkpoint tags the partitioner kept each dropped product; the fixed form (call 55a): 18.0
GiB and 12,304 tokens/s against PEFT's 31.9 GiB and 11,439. Two earlier forms: opaque custom ops
drawing from a new generator per call (as lean, 6% slower at the defaults and 24% slower under a 16 GiB
budget, run 2026-11-30u), and ``functionalize_rng_ops`` (no change, run 2026-11-30t).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts


class LightDropoutLinear(nn.Linear):
    """A LoRA ``lora_A`` projection with its dropout inside (see the module docstring)."""

    dropout_p: float = 0.0
    in_compiled: bool = True
    """Run light inside ``torch.compile`` too, with hashed masks (:func:`hashed_keep`). On: on an H200 the 8B
    shape's compiled defaults peak at 18.0 GiB instead of 31.9 with PEFT's dropout, 8% faster (call 55a)."""
    seed_base: torch.Tensor | None = None
    """Compiled layers' masks: an int64 scalar on the adapters' device, shared by the model's layers, redrawn
    from torch's CPU generator before each training forward pass through compiled layers
    (:func:`use_light_dropout`'s pre-hook), so a checkpointed recompute, in the same pass, draws the same
    masks."""
    seed_offset: torch.Tensor | None = None
    """This linear's int64 scalar (on its weight's device), mixed with :attr:`seed_base`. Tensors, not ints,
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
            and (not compiling or self._seeded_on(x.device))
            # a CUDA graph would freeze a host seed; not asked while compiling: dynamo cannot trace the question
            # (run 2026-12-02c: a graph break there sent PEFT's whole 4-bit LoRA forward back to eager), and the
            # compiled form's seeds are device tensors, which a graph reads afresh
            and (compiling or not (x.is_cuda and torch.cuda.is_current_stream_capturing()))
        )
        if not light:
            return F.linear(F.dropout(x, self.dropout_p, self.training), self.weight, self.bias)
        if compiling:
            return _compiled_dropped_linear(x, self)
        seed = int(torch.randint(0, 2**62, ()))  # CPU generator: no device sync
        return _DroppedLinear.apply(x, self.weight, self.dropout_p, seed)

    def _seeded_on(self, device: torch.device) -> bool:
        """Whether the compiled form can run: switched on, and the seeds on ``device`` (a model moved after
        its adapters were built keeps PEFT's dropout in compiled layers rather than copy seeds per call)."""
        base, offset = self.seed_base, self.seed_offset
        return (
            self.in_compiled
            and base is not None
            and offset is not None
            and base.device == device == offset.device
        )


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
    """``linear(x * mask, weight)`` in a compiled layer, the mask from :func:`hashed_keep`, as a selectively
    checkpointed region: the matmul's output is kept, the rest (hash, mask, product) recomputed in the backward
    pass from ``x``, which the layer keeps anyway, and this linear's seed tensor. Without the tags the
    compiler's partitioner keeps the product, since the backward's weight gradient reads it whole."""
    seed = (layer.seed_base + layer.seed_offset * _GOLDEN) & _MASK32
    return checkpoint(
        _hashed_dropped_linear, x, layer.weight, layer.dropout_p, seed,
        use_reentrant=False, context_fn=_keep_matmuls_only,
    )  # fmt: skip


def _hashed_dropped_linear(
    x: torch.Tensor, weight: torch.Tensor, p: float, seed: torch.Tensor
) -> torch.Tensor:
    return F.linear(x * hashed_keep(x, p, seed), weight)


class _NoInPlaceReminder(logging.Filter):
    """Drops torch's reminder, printed once per process when a selectively checkpointed region is compiled,
    that such a region must not hold in-place ops: this module's region (:func:`_hashed_dropped_linear`) holds
    none, and the reminder would otherwise open the log of every compiled run on a GPU."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "context_fn is passed to torch.utils.checkpoint" not in record.getMessage()


logging.getLogger("torch._higher_order_ops.wrap").addFilter(_NoInPlaceReminder())

_MATMULS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default)


def _keep_or_recompute(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _MATMULS else CheckpointPolicy.PREFER_RECOMPUTE


def _keep_matmuls_only() -> Any:
    return create_selective_checkpoint_contexts(_keep_or_recompute)


_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x61C88647  # 2**32 / golden ratio (its complement): neighbouring offsets give far-apart seeds


def hashed_keep(x: torch.Tensor, p: float, seed: torch.Tensor) -> torch.Tensor:
    """A dropout mask for ``x``: 0 or ``1 / (1 - p)`` in ``x``'s dtype, each element kept when a 32-bit hash of
    its flat index and ``seed`` (an int64 scalar tensor below ``2**32`` on ``x``'s device) is at least
    ``p * 2**32``. The hash is murmur3's finaliser, a bijection of 32-bit words that moves every input bit
    to every output bit, so neighbouring elements' decisions are unrelated. int64 arithmetic, masked to 32
    bits after each multiply: the products' high bits wrap and are discarded."""
    # the seed first: inductor narrows a small enough index to int32 in its kernels, and adding the loaded
    # int64 seed widens it again before any constant beyond int32 meets it
    wide = torch.arange(x.numel(), device=x.device, dtype=torch.int64).view(x.shape) + seed
    h = (wide * 0x9E3779B1 + (wide >> 32)) & _MASK32
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & _MASK32
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & _MASK32
    h = h ^ (h >> 16)
    return (h >= int(p * 2**32)).to(x.dtype) * (1 / (1 - p))


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
    changed, bases = 0, {}  # one shared pass seed per device the adapters are on
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        variants = getattr(module, "lora_variant", {}) or {}
        for name, dropout in list(module.lora_dropout.items()):
            lora_a = module.lora_A[name] if name in module.lora_A else None  # noqa: SIM401 (a ModuleDict)
            plain = type(lora_a) is nn.Linear and lora_a.bias is None and name not in variants
            if plain and isinstance(dropout, nn.Dropout) and dropout.p > 0 and not module.use_dora.get(name):
                device = lora_a.weight.device
                if device not in bases:
                    bases[device] = torch.zeros((), dtype=torch.int64, device=device)
                lora_a.__class__ = LightDropoutLinear
                lora_a.dropout_p = dropout.p
                lora_a.seed_base = bases[device]
                lora_a.seed_offset = torch.tensor(changed, dtype=torch.int64, device=device)
                module.lora_dropout[name] = nn.Identity()
                changed += 1
    if changed:
        model.register_forward_pre_hook(_new_masks(list(bases.values())))
    return changed


def _new_masks(bases: list[torch.Tensor]) -> Any:
    """A forward pre-hook redrawing :attr:`~LightDropoutLinear.seed_base` for a training pass through compiled
    layers (only then: eager layers draw their own seeds, and their numbers stay as they were)."""
    from qlora_kit.compat import decoder_layers

    layers: list[nn.Module] = []

    def hook(module: nn.Module, args: Any) -> None:
        if not (LightDropoutLinear.in_compiled and module.training and torch.is_grad_enabled()):
            return
        if not layers:
            layers.extend(decoder_layers(module))  # found once: the model's layers do not change
        if any(getattr(layer, "_compiled_call_impl", None) is not None for layer in layers):
            seed = int(torch.randint(0, 2**32, ()))  # CPU generator: reproducible from the run's seed
            for base in bases:
                base.fill_(seed)  # in place: the compiled graphs read these tensors

    return hook
