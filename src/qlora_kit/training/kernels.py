"""Kernel choices the training loop makes for speed, each backed by a measurement."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def attention_backends(device: torch.device) -> AbstractContextManager:
    """Scaled-dot-product attention without the cuDNN backend on CUDA devices.

    Why: our batches change shape from step to step (dynamic padding, packing, length grouping), and
    cuDNN's attention pays a large CPU cost for each new shape. Measured on one H200 (torch 2.11, the
    W1 distilgpt2-shaped job, `seed_improved.yaml`, 60 optimizer steps): 51.6 s with cuDNN allowed vs
    26.1 s without; packed batches 93.2 s vs 30.3 s (benchmarks/sdpa_shapes.py, benchmarks/RESULTS.md).
    Flash, memory-efficient and math kernels stay available, in torch's own order of preference.
    """
    if device.type != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
