"""Optimizer and learning-rate schedule factories for the ``train.optimizer`` / ``train.scheduler`` unions."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from qlora_kit.config import AdamWTorch, CosineSchedule, LinearSchedule

# bitsandbytes class for each `kind` (imported lazily: bitsandbytes is only needed when chosen)
_BNB_CLASSES = {
    "adamw_8bit": "AdamW8bit",
    "paged_adamw_8bit": "PagedAdamW8bit",
    "paged_adamw_32bit": "PagedAdamW32bit",
}


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into a decayed and an undecayed group.

    Only matrices are decayed (LoRA's ``lora_A``/``lora_B`` weights, a trained embedding or head);
    vectors (biases, norm weights, DoRA magnitudes) are not, since shrinking them toward zero
    changes what a layer computes rather than regularising it.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (were the adapters applied?)")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: AdamWTorch, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``cfg.kind`` over the trainable parameters of ``model``.

    ``adamw_torch`` uses the fused kernel when every trainable parameter lives on a device that has
    one (CUDA, and CPU in recent PyTorch); the bitsandbytes optimizers also run on the CPU (the paged
    ones fall back to unpaged state there).
    """
    groups = param_groups(model, cfg.weight_decay)
    kwargs = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps}
    if cfg.kind == "adamw_torch":
        return torch.optim.AdamW(groups, fused=_fused_supported(groups) or None, **kwargs)
    import bitsandbytes as bnb

    return getattr(bnb.optim, _BNB_CLASSES[cfg.kind])(groups, **kwargs)


def _fused_supported(groups: list[dict[str, Any]]) -> bool:
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    supported = set(_get_fused_kernels_supported_devices())
    return all(p.device.type in supported and p.is_floating_point() for g in groups for p in g["params"])


def warmup_steps(cfg: Any, total_steps: int) -> int:
    """Warmup length in optimizer steps: ``warmup_steps``, or ``ceil(warmup_ratio * total_steps)``
    as transformers computes it (the seed: 0.03 of 300 steps = 9)."""
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total_steps)
    return math.ceil((cfg.warmup_ratio or 0.0) * total_steps)


def lr_factor(cfg: Any, step: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate used by optimizer step ``step`` (0-based).

    Warmup rises linearly as ``(step + 1) / (warmup + 1)``: unlike transformers' ``step / warmup``,
    the first step is not wasted at lr 0, and the peak is reached at step ``warmup``. After warmup,
    `constant` stays at 1, `linear` decays toward 0 at ``total_steps``, `cosine` toward
    ``min_lr_ratio``.
    """
    warmup = warmup_steps(cfg, total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total_steps - warmup)
    if isinstance(cfg, LinearSchedule):
        return max(0.0, 1.0 - progress)
    if isinstance(cfg, CosineSchedule):
        floor = cfg.min_lr_ratio
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """A ``LambdaLR`` following :func:`lr_factor`; step it once per optimizer step.

    The lambda is a ``functools.partial`` (empty ``__dict__``), so the scheduler's state dict holds
    only its step count and learning rates, which checkpoints can load with ``weights_only``.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, cfg, total_steps=total_steps)
    )
