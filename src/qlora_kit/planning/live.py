"""The memory plan of a loaded model: what the Trainer's `auto` checkpointing and offload decide from.

:func:`choose_memory_settings` reads the model's shape, quantization and adapter from the live model
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

from qlora_kit.planning.memory import Adapter, MemoryEstimate, Settings, estimate_memory
from qlora_kit.planning.shape import model_shape

logger = logging.getLogger(__name__)

MARGIN = 0.10
"""Share of device memory kept free when deciding that a setting fits."""


@dataclass(frozen=True)
class MemoryDecision:
    """Checkpointing and offload for a run, with the estimate they were chosen by (None when fixed)."""

    grad_checkpointing: bool
    activation_offload: bool
    estimate: MemoryEstimate | None = None
    capacity: int | None = None

    def describe(self) -> str:
        """One line for the log."""
        onoff = lambda b: "on" if b else "off"  # noqa: E731
        text = f"checkpointing {onoff(self.grad_checkpointing)}, activation offload {onoff(self.activation_offload)}"
        if self.estimate is not None and self.capacity:
            gib = 2**30
            text += f" (planned peak {self.estimate.needed / gib:.2f} GiB of {self.capacity / gib:.1f} GiB)"
        return text


def choose_memory_settings(train_cfg: Any, model: Any, tokens: int, device: torch.device) -> MemoryDecision:
    """Resolve `auto` in ``train.grad_checkpointing`` / ``train.activation_offload`` for ``model`` when its
    largest micro-batch holds ``tokens`` tokens on ``device``."""
    checkpointing, offload = train_cfg.grad_checkpointing, train_cfg.activation_offload
    if device.type != "cuda":
        offload = False if offload == "auto" else offload  # nothing to offload to: it is all host memory
    if "auto" not in (checkpointing, offload):
        return MemoryDecision(bool(checkpointing), bool(offload))
    capacity = _capacity(device)
    shape, quant, adapter, dtype_bytes = _live_inputs(model, train_cfg)
    loss = getattr(train_cfg.loss, "kind", "standard")
    loss = "chunked" if loss == "auto" else loss
    estimate = None
    for ckpt, off in ((False, False), (True, False), (True, True)):
        if checkpointing not in ("auto", ckpt) or offload not in ("auto", off):
            continue
        estimate = estimate_memory(shape, quant, adapter, Settings(ckpt, off, loss), tokens, dtype_bytes)
        if estimate.needed <= (1 - MARGIN) * capacity:
            return MemoryDecision(ckpt, off, estimate, capacity)
    return MemoryDecision(checkpointing is not False, offload is True or (offload == "auto" and
                          device.type == "cuda"), estimate, capacity)  # fmt: skip


def check_first_step(decision: MemoryDecision, device: torch.device) -> bool:
    """Compare the first step's measured peak with the estimate; True when checkpointing should be turned
    on now (it was chosen off, and the measured peak left less than the margin free)."""
    if device.type != "cuda" or decision.estimate is None or not decision.capacity:
        return False
    measured = torch.cuda.max_memory_allocated(device)
    planned = decision.estimate.peak_allocated
    logger.info(
        "memory at the first step: %.2f GiB measured, %.2f GiB planned", measured / 2**30, planned / 2**30
    )
    return not decision.grad_checkpointing and measured > (1 - MARGIN) * decision.capacity


def _capacity(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 16 * 2**30


def _live_inputs(model: Any, train_cfg: Any) -> tuple[Any, Any, Adapter, int]:
    """Shape, quantization, adapter and compute-dtype bytes of a loaded (PEFT-wrapped) model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
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
    )
    floating = next((p for p in base.parameters() if p.is_floating_point()), None)
    dtype_bytes = floating.element_size() if floating is not None else 2
    return model_shape(config), quant, adapter, dtype_bytes
