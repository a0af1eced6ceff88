"""The memory plan of a loaded model: what the Trainer's `auto` checkpointing and offload decide from.

:func:`choose_layout` reads the model's shape, quantization and adapter from the live model
(no config files), estimates the peak of the largest micro-batch under each setting the train config
allows, and takes the fastest that fits the device with a margin. The first step's measured peak is
then compared with the estimate (:func:`check_first_step`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from qlora_kit.errors import TrainingError
from qlora_kit.model.lora_dropout import LightDropoutLinear
from qlora_kit.planning.memory import (
    HOST_SHARE,
    Adapter,
    MemoryEstimate,
    Settings,
    estimate_memory,
    host_ram,
    pins_too_much,
)
from qlora_kit.planning.settings import fewest_layers, layouts, some_layers
from qlora_kit.planning.shape import model_shape
from qlora_kit.training.compiling import wants_compile

logger = logging.getLogger(__name__)

MARGIN = 0.10
"""Share of device memory kept free when deciding that a setting fits."""


MIN_PASS_TOKENS = 4096
"""A pass this big keeps a GPU busy: below it, recomputing (checkpointing) beats more, smaller passes. The
host's work is per pass (bitsandbytes' matmul dispatch, launches): on an H200 the 8B shape's two 2,048-token
passes ran at 9,331 tokens/s against 11,632 for one of 4,096, and under a 16 GiB budget 6,212 (18 layers
checkpointed) against 9,012 (26 layers), run 2026-11-30o."""


@dataclass(frozen=True)
class MemoryDecision:
    """How a run lays out its steps: the memory settings (checkpointing and offload, for all or the first
    layers), the token budget of one forward pass, and the estimate they were chosen by (None when
    nothing was left to choose)."""

    settings: Settings
    budget: int | None = None
    """Tokens of one forward pass (None: ``micro_batch_size`` rows per pass)."""
    estimate: MemoryEstimate | None = None
    capacity: int | None = None

    @property
    def grad_checkpointing(self) -> bool:
        return self.settings.grad_checkpointing

    @property
    def activation_offload(self) -> bool:
        return self.settings.activation_offload

    @property
    def checkpoint_layers(self) -> int | None:
        """With checkpointing: the number of decoder layers checkpointed, the first ones (None: all)."""
        return self.settings.checkpoint_layers if self.grad_checkpointing else None

    @property
    def offload_layers(self) -> int | None:
        """With offload: the number of layers whose inputs go to host memory, the first ones (None: all)."""
        return self.settings.offload_layers if self.activation_offload else None

    def describe(self) -> str:
        """One line for the log."""

        def knob(on: bool, first: int | None) -> str:
            return "off" if not on else "on" if first is None else f"on for the first {first} decoder layers"

        text = (
            f"checkpointing {knob(self.grad_checkpointing, self.checkpoint_layers)}, "
            f"activation offload {knob(self.activation_offload, self.offload_layers)}"
        )
        text += (
            f", {self.budget} tokens per forward pass" if self.budget else ", micro_batch_size rows per pass"
        )
        if self.estimate is not None and self.capacity:
            gib = 2**30
            capacity = self.capacity / gib  # a budget may be a fraction of a GiB
            text += f" (planned peak {self.estimate.needed / gib:.2f} GiB of {capacity:.{1 if capacity >= 1 else 2}f} GiB)"
        return text


def choose_layout(
    train_cfg: Any, model: Any, device: torch.device, *, step_tokens: int, row_tokens: int, pass_tokens: int
) -> MemoryDecision:
    """Resolve `auto` in ``train.micro_batch_tokens``, ``train.grad_checkpointing`` and
    ``train.activation_offload`` for ``model`` on ``device``.

    Args:
        step_tokens: the collated tokens of the largest step's rows in one pass (per process).
        row_tokens: the longest single row (no pass can be smaller).
        pass_tokens: the largest pass of ``micro_batch_size`` rows (the layout without a budget).

    The fastest choice that fits the device with a margin wins: no checkpointing with one pass per step;
    else no checkpointing with passes of at least :data:`MIN_PASS_TOKENS`; else (`auto` checkpointing) the
    fewest decoder layers checkpointed for one pass per step; else checkpointing, then (`auto` offload) the
    fewest layers offloaded, then every layer offloaded, with the largest passes that fit. Offload must also
    leave the host its share (:data:`~qlora_kit.planning.memory.HOST_SHARE`): a layout that could only fit
    by pinning more raises :class:`~qlora_kit.errors.TrainingError`. On a CPU (host memory) a step is one
    pass, without checkpointing.
    """
    checkpointing, offload, budget = (
        train_cfg.grad_checkpointing,
        train_cfg.activation_offload,
        train_cfg.micro_batch_tokens,
    )
    if device.type != "cuda":
        offload = False if offload == "auto" else offload  # nothing to offload to: it is all host memory
    wanted = {None: pass_tokens, "auto": step_tokens}.get(budget, budget)
    if "auto" not in (checkpointing, offload) and budget != "auto":
        settings = Settings(bool(checkpointing), bool(offload))
        if settings.activation_offload:  # asked for explicitly: still refuse what the host cannot pin
            _check_host(_estimator(train_cfg, model, device)[0](settings, wanted), wanted)
        return MemoryDecision(settings, None if budget is None else wanted)
    capacity = _capacity(device, getattr(train_cfg, "memory_budget_gib", None))
    estimate_at, loss = _estimator(train_cfg, model, device)
    compiled = wants_compile(getattr(train_cfg, "compile", False), model, device, offloading=False)[0]
    floor = max(row_tokens, min(wanted, MIN_PASS_TOKENS))
    last = None
    for ckpt, off, some in layouts(checkpointing, offload):
        settings = Settings(ckpt, off, loss, compiled)
        if some:  # checkpoint (or offload) the fewest layers for one pass of `wanted` tokens
            layers = model_shape(_base(model).config).layers
            # the GPU side alone: it falls monotonically as layers are added (host memory is checked below)
            one_pass = lambda s: estimate_at(s, wanted).needed <= (1 - MARGIN) * capacity  # noqa: E731
            k = fewest_layers(one_pass, settings, layers)
            if k is None:
                continue
            settings = some_layers(settings, k)
        fits = _largest_that_fits(lambda t, s=settings: estimate_at(s, t), capacity, wanted)
        last = settings
        if fits >= (floor if budget == "auto" else wanted):  # an explicit budget must fit whole
            tokens = min(wanted, fits) if budget == "auto" else wanted
            return MemoryDecision(
                settings, tokens if budget is not None else None, estimate_at(settings, tokens), capacity
            )
    settings = last or Settings(True, device.type == "cuda", loss, compiled)
    tokens = max(row_tokens, _largest_that_fits(lambda t: estimate_at(settings, t), capacity, wanted))
    estimate = estimate_at(settings, tokens)
    _check_host(estimate, tokens)
    return MemoryDecision(settings, tokens if budget is not None else None, estimate, capacity)


def _check_host(estimate: MemoryEstimate, tokens: int) -> None:
    """Refuse a layout whose offload would pin more than the host's share of its memory: the OS would
    kill the run mid-step, with nothing saved."""
    ram = host_ram()
    if not pins_too_much(estimate.host_bytes, ram):
        return
    gib = 2**30
    raise TrainingError(
        f"activation offload would pin {estimate.host_bytes / gib:.1f} GiB of host memory for a pass of "
        f"{tokens:,} tokens, and this machine has {ram / gib:.1f} GiB (offload may use {HOST_SHARE:.0%} of it): "
        "shorten the rows (data.max_length) or train on a GPU with more memory"
    )


def _estimator(train_cfg: Any, model: Any, device: torch.device | None = None) -> tuple[Any, str]:
    shape, quant, adapter, dtype_bytes = _live_inputs(model, train_cfg, device)
    loss = getattr(train_cfg.loss, "kind", "standard")
    loss = "chunked" if loss == "auto" else loss

    def estimate_at(settings: Settings, tokens: int) -> MemoryEstimate:
        return estimate_memory(shape, quant, adapter, settings, tokens, dtype_bytes)

    return estimate_at, loss


def _fits(estimate: MemoryEstimate, capacity: int) -> bool:
    """Whether ``estimate`` fits the device with the margin, and what it offloads fits the host's share."""
    return estimate.needed <= (1 - MARGIN) * capacity and not pins_too_much(estimate.host_bytes, host_ram())


def _largest_that_fits(estimate_at: Any, capacity: int, most: int) -> int:
    """The largest token count up to ``most`` whose estimate fits (:func:`_fits`; 0 if none): bisection,
    since memory grows with tokens."""

    def fits(tokens: int) -> bool:
        return _fits(estimate_at(tokens), capacity)

    if fits(most):
        return most
    lo, hi = 0, most
    while hi - lo > 64:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def check_first_step(decision: MemoryDecision, device: torch.device) -> bool:
    """Compare the first step's measured peak with the estimate; True when checkpointing (with offload:
    offload) should be turned on for every layer now (it was chosen off or for some layers, and the measured
    peak left less than the margin free)."""
    if device.type != "cuda" or decision.estimate is None or not decision.capacity:
        return False
    measured = torch.cuda.max_memory_allocated(device)
    planned = decision.estimate.peak_allocated
    logger.info(
        "memory at the first step: %.2f GiB measured, %.2f GiB planned", measured / 2**30, planned / 2**30
    )
    return decision.settings.can_lean_more() and measured > (1 - MARGIN) * decision.capacity


def _capacity(device: torch.device, budget_gib: float | None = None) -> int:
    """The device's memory (host memory for a CPU), or ``train.memory_budget_gib`` when that is less."""
    budget = int(budget_gib * 2**30) if budget_gib else None
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            total = 16 * 2**30
    return min(total, budget) if budget else total


def _live_inputs(
    model: Any, train_cfg: Any, device: torch.device | None = None
) -> tuple[Any, Any, Adapter, int]:
    """Shape, quantization, adapter and compute-dtype bytes of a loaded (PEFT-wrapped) model that trains on
    ``device`` (default: where its first parameter is)."""
    if device is None:
        device = next(model.parameters()).device
    base = _base(model)
    config = base.config
    qc = getattr(config, "quantization_config", None)
    qc_get = (lambda k: qc.get(k)) if isinstance(qc, dict) else (lambda k: getattr(qc, k, None))  # noqa: E731
    kind = (
        "bnb_4bit"
        if qc and qc_get("load_in_4bit")
        else "bnb_8bit"
        if qc and qc_get("load_in_8bit")
        else "none"
    )
    quant = SimpleNamespace(kind=kind, double_quant=bool(qc and qc_get("bnb_4bit_use_double_quant")))
    peft_config = getattr(model, "peft_config", {}).get("default")
    adapter = Adapter(
        r=getattr(peft_config, "r", 8),
        dropout=getattr(peft_config, "lora_dropout", 0.0),
        target_modules=sorted(getattr(peft_config, "target_modules", None) or []) or "all-linear",
        modules_to_save=tuple(getattr(peft_config, "modules_to_save", None) or ()),
        optimizer=train_cfg.optimizer.kind,
        light_dropout=device.type in LightDropoutLinear.devices
        and any(isinstance(m, LightDropoutLinear) for m in model.modules()),
        light_in_compiled=LightDropoutLinear.in_compiled,
    )
    floating = next((p for p in base.parameters() if p.is_floating_point()), None)
    dtype_bytes = floating.element_size() if floating is not None else 2
    return model_shape(config), quant, adapter, dtype_bytes


def _base(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
