"""`quant.compute_dtype: auto`: the dtype a model computes in, chosen for the device it trains on.

``auto`` (the default) is bfloat16 wherever the hardware multiplies it: CUDA GPUs that support it (float16
on older ones), and CPUs with native bfloat16 instructions (AVX512-BF16 or AMX on x86, the BF16 extension
on Arm). Elsewhere on a CPU it is float32. Why: without those instructions torch emulates every bfloat16
matmul; on a 2-core AVX2 machine a 256 x 576 by 576 x 1,536 product took 36.5 ms in bfloat16 against
0.99 ms in float32, so a bfloat16 model trains tens of times slower there for no memory a small CPU run
needs. An explicit dtype is always kept (the seed recipe asks for bfloat16 and gets it).

The choice is made once per run, before its directory is checked or anything is written, and recorded in
``run_config.yaml`` as the concrete dtype, so an export, a prediction or a resume reads what was trained.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

AUTO = "auto"


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (oneDNN's check; False where torch cannot say)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def default_device() -> torch.device:
    """Where a model trains when no device is named: a GPU when torch sees one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_compute_dtype(name: str, device: torch.device | None = None) -> str:
    """``name`` as a concrete dtype name for ``device`` (default: :func:`default_device`): itself unless it
    is ``auto`` (module docstring)."""
    if name != AUTO:
        return name
    device = device if device is not None else default_device()
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device.type == "cpu" and not cpu_computes_bf16():
        return "float32"
    return "bfloat16"


def resolve_quant_config(quant_cfg: Any, device: torch.device) -> Any:
    """``quant_cfg`` (a validated `quant` section) with ``compute_dtype: auto`` made concrete for ``device``;
    the same object when there is nothing to resolve. Logs the choice when it is not bfloat16."""
    name = getattr(quant_cfg, "compute_dtype", None)
    if name != AUTO:
        return quant_cfg
    chosen = resolve_compute_dtype(name, device)
    if chosen == "float32":
        logger.info(
            "quant.compute_dtype auto: float32 (this CPU has no native bfloat16; torch would emulate "
            "every bfloat16 matmul, tens of times slower). Set quant.compute_dtype to choose."
        )
    elif chosen != "bfloat16":
        logger.info("quant.compute_dtype auto: %s (%s does not support bfloat16)", chosen, device)
    return quant_cfg.model_copy(update={"compute_dtype": chosen})


def resolve_run_config(cfg: Any, device: torch.device) -> Any:
    """The run config ``cfg`` with its `quant` section resolved by :func:`resolve_quant_config`."""
    quant = resolve_quant_config(cfg.quant, device)
    return cfg if quant is cfg.quant else cfg.model_copy(update={"quant": quant})
