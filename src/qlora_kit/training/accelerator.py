"""The Accelerator a training session runs under: device, mixed precision, trackers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qlora_kit.compat import reset_stale_accelerate_state
from qlora_kit.config.resume import flatten
from qlora_kit.errors import ConfigError


def resolve_mixed_precision(choice: str, device: torch.device | None = None) -> str:
    """``auto`` -> bf16 on GPUs that support it, fp16 (with a loss scaler) on older GPUs, none on CPU.

    ``device`` is where the model lives (default: ``cuda`` when available); a CPU model gets no
    autocast under ``auto`` even on a machine with a GPU.
    """
    if choice != "auto":
        return choice
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if on_cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def make_accelerator(cfg: Any, model: Any, given: Any, output_dir: Path) -> tuple[Any, bool]:
    """``(accelerator, owned)``: ``given`` as it is, or one made for the model's device and ``cfg``'s
    precision and trackers (then owned: the session ends it).

    Raises:
        ConfigError: an Accelerator that would accumulate gradients itself.
    """
    if given is not None:
        acc, owns = given, False
    else:
        from accelerate import Accelerator

        cpu = next(model.parameters()).device.type == "cpu"
        precision = resolve_mixed_precision(cfg.mixed_precision, next(model.parameters()).device)
        # accelerate keeps device and precision process-wide; an earlier fit may have used others
        reset_stale_accelerate_state(cpu, precision)
        acc = Accelerator(cpu=cpu, mixed_precision=precision, log_with=list(cfg.trackers) or None,
                          project_dir=str(output_dir))  # fmt: skip
        owns = True
    if acc.gradient_accumulation_steps != 1:
        # accelerator.backward would divide the loss again, on top of the token normalisation
        raise ConfigError([("train.grad_accum", "pass an Accelerator with gradient_accumulation_steps=1; "
                            "the Trainer accumulates over train.grad_accum itself")])  # fmt: skip
    return acc, owns


def flat_config(tree: dict[str, Any]) -> dict[str, Any]:
    """Scalars only, dotted keys (tensorboard's hparams accept nothing else)."""
    return {
        key: value if isinstance(value, (int, float, str, bool)) else str(value)
        for key, value in flatten(tree).items()
    }
