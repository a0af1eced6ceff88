"""Optimizer kinds (the `train.optimizer` section), registered in :data:`qlora_kit.registry.optimizers`.

An optimizer kind is built from its config and asked for ``create(model)``: a ``torch.optim.Optimizer``
over the model's trainable parameters. Built-ins: ``adamw_torch`` (fused where supported),
``adamw_8bit``, ``paged_adamw_8bit`` and ``paged_adamw_32bit`` (bitsandbytes).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from qlora_kit.compat import fused_adamw_devices
from qlora_kit.registry import optimizers
from qlora_kit.strict import StrictModel


class AdamWOptions(StrictModel):
    """AdamW's settings."""

    lr: float = Field(default=2e-4, gt=0, allow_inf_nan=False)
    """Peak learning rate."""
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """Decoupled weight decay (never applied to biases and norms)."""
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)


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


@optimizers.register("adamw_torch")
class AdamWTorch:
    """torch.optim.AdamW (fused kernel where the device supports it)."""

    Options = AdamWOptions

    def __init__(self, config: Any):
        self.config = config

    def create(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The optimizer over the trainable parameters of ``model``.

        The fused kernel is used when every trainable parameter lives on a device that has one (CUDA,
        and CPU in recent PyTorch).
        """
        groups = param_groups(model, self.config.weight_decay)
        fused = all(
            p.device.type in fused_adamw_devices() and p.is_floating_point()
            for g in groups
            for p in g["params"]
        )
        return torch.optim.AdamW(groups, fused=fused or None, **self._kwargs())

    def _kwargs(self) -> dict[str, Any]:
        cfg = self.config
        return {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps}


class _BnbAdamW(AdamWTorch):
    """A bitsandbytes AdamW class, named by ``bnb_class``; also runs on the CPU (the paged variants fall
    back to unpaged state there)."""

    bnb_class: ClassVar[str]

    def create(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        import bitsandbytes as bnb

        groups = param_groups(model, self.config.weight_decay)
        return getattr(bnb.optim, self.bnb_class)(groups, **self._kwargs())


@optimizers.register("adamw_8bit")
class AdamW8bit(_BnbAdamW):
    """bitsandbytes 8-bit AdamW (the reference recipe's `adamw_8bit`)."""

    bnb_class = "AdamW8bit"


@optimizers.register("paged_adamw_8bit")
class PagedAdamW8bit(_BnbAdamW):
    """bitsandbytes paged 8-bit AdamW (state pages out to CPU under memory pressure)."""

    bnb_class = "PagedAdamW8bit"


@optimizers.register("paged_adamw_32bit")
class PagedAdamW32bit(_BnbAdamW):
    """bitsandbytes paged 32-bit AdamW."""

    bnb_class = "PagedAdamW32bit"
