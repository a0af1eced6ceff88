"""Kernel choices the training loop makes for speed, each backed by a measurement."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

LONG_ROW_TOKENS = 16_384
"""Rows at least this long, unpadded and unpacked, get cuDNN attention first (see :func:`long_row_attention`)."""


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


def is_long_plain_row(batch: dict[str, Any]) -> bool:
    """Whether ``batch`` (on the CPU, before it moves) is rows of at least :data:`LONG_ROW_TOKENS` tokens
    with no padding and no packing: what transformers runs as one causal SDPA call without a mask."""
    ids = batch["input_ids"]
    if ids.shape[-1] < LONG_ROW_TOKENS or any(k.startswith("cu_seq_lens") for k in batch):
        return False
    mask = batch.get("attention_mask")
    if mask is not None and not bool(mask.all()):
        return False
    positions = batch.get("position_ids")
    if positions is None:
        return True
    expected = torch.arange(ids.shape[-1], dtype=positions.dtype).expand_as(positions)
    return bool(torch.equal(positions, expected))  # a reset would mean packed examples (a mask)


def long_row_attention(device: torch.device, long_plain: bool) -> AbstractContextManager:
    """cuDNN attention first for a micro-batch of long plain rows (forward and backward, recompute included).

    Why: for one long causal row cuDNN's fused attention is 1.6-1.7x faster than flash (the 8B shape's
    32/8 heads of 128, bf16, forward + backward: 0.90 s vs 1.50 s at 131,072 tokens, 0.22 s vs 0.37 s at
    65,536; one H200, torch 2.11, cuDNN 9, ``benchmarks/sdpa_long.py``), and at these lengths a step takes
    seconds, so cuDNN's per-shape CPU cost (:func:`attention_backends`) does not count. Enter it around the
    forward *and* the backward: a checkpointed layer's recompute must pick the same kernel as its forward.
    """
    if device.type != "cuda" or not long_plain:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    return sdpa_kernel([*order, SDPBackend.MATH], set_priority=True)
