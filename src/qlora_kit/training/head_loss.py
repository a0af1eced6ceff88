"""Causal-LM losses that never build the whole ``[B, T, vocab]`` logits tensor.

:func:`~qlora_kit.training.loss.causal_lm_loss` materialises every position's logits, their fp32 copy
and their gradient: about 1.3 MB per token for a 128,256-token vocabulary, which is what limits
long-context training of an 8B model. The losses here run the model without its output head
(:mod:`qlora_kit.training.head_split`), keep only the positions that have a target (prompt and
padding positions never reach the head), and then either

- ``chunked``: apply the head + fp32 cross-entropy to ``chunk_tokens`` rows at a time, each chunk
  under non-reentrant activation checkpointing, so its logits are freed after the forward and
  recomputed in the backward. The head is called as a module: LoRA on the head and PEFT
  ``modules_to_save`` work unchanged. Pure PyTorch, any device.
- ``fused``: Liger-Kernel's fused linear cross-entropy on the head's weight (CUDA, plain Linear head).

Both honour :class:`~qlora_kit.training.loss.LossFn` (summed token cross-entropy, fp32) and are
exact replacements only where :func:`~qlora_kit.training.head_split.check_head_split` passes;
:func:`select_loss` makes that choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from qlora_kit.compat import fsdp_launched
from qlora_kit.errors import ConfigError
from qlora_kit.training.head_split import (
    HeadInput,
    HeadSplitError,
    check_head_split,
    final_hidden_states,
    find_head,
    unwrap_causal_lm,
)
from qlora_kit.training.liger import liger, liger_findable, plain_linear
from qlora_kit.training.loss import IGNORE_INDEX, LossFn, causal_lm_loss, shift_targets

CHUNK_LOGITS_BYTES = 256 * 2**20
"""Default size of one chunk's fp32 logits. The transient peak of a chunk is about three times this
(16-bit logits, their fp32 copy and log-softmax, then their gradients): ~0.8 GB, whatever the
sequence length, against ~1.3 GB per 1,000 tokens of a 128,256-token vocabulary for the standard loss."""

PLAIN_HEAD_LOGITS_BYTES = 512 * 2**20
"""The fused loss takes the plain head and cross-entropy for passes whose fp32 logits stay within this
(2,624 rows for GPT-2's vocabulary, 1,024 for a 128,256-token one): Liger's kernel loops over chunks of
about ``rows x hidden / vocab`` rows (32 for a W1 pass of 2,100 rows), each reading the whole head
weight, so at these sizes it is bound by launches and memory, where one plain matmul is not."""

VOCAB_ALIGNMENT = 64
"""The plain head's weight is padded with zero rows to a multiple of this on CUDA: cuBLAS picks kernels
for unaligned leading dimensions (``align1``) that ran GPT-2's 50,257-wide head at ~37 TFLOP/s on an
H200, 8.6 ms of a W1 step (benchmarks/gpu/call36.sh)."""

LOSS_KINDS = ("auto", "standard", "chunked", "fused")


def default_chunk_tokens(vocab_size: int, budget_bytes: int = CHUNK_LOGITS_BYTES) -> int:
    """Rows per chunk so that a chunk's fp32 logits take about ``budget_bytes``.

    Rounded down to a multiple of 64 rows (at least 64) so the head's matmul keeps an efficient
    shape: 512 rows for a 128,256-token vocabulary, 1,280 for GPT-2's 50,257, 2,048 for 32,000.
    """
    rows = budget_bytes // (4 * vocab_size)
    return max(64, rows // 64 * 64)


def _supervised(split: HeadInput, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden states ``[N, H]`` and targets ``[N]`` of the positions that have a target: gathered at the
    positions :func:`~qlora_kit.training.loss.with_targets` found on the CPU where the batch has them (no
    device sync), else selected with a mask."""
    if "target_positions" in batch:
        positions = batch["target_positions"].to(split.hidden.device)
        hidden = split.hidden.flatten(0, -2).index_select(0, positions)
        return hidden, batch["target_ids"].to(split.hidden.device)
    targets = shift_targets(batch["labels"], batch.get("position_ids")).to(split.hidden.device)
    keep = targets != IGNORE_INDEX
    return split.hidden[keep], targets[keep]


def _chunk_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def aligned_linear_loss(
    linear: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor, align: bool | None = None
) -> torch.Tensor:
    """:func:`_chunk_loss` for a plain Linear head, its weight padded with zero rows to a multiple of
    :data:`VOCAB_ALIGNMENT` when ``align`` (default: on CUDA). The extra logits are sliced off before the
    loss, so loss and gradients are those of ``linear`` itself."""
    vocab = linear.out_features
    pad = -vocab % VOCAB_ALIGNMENT
    if not pad or not (hidden.device.type == "cuda" if align is None else align):
        return _chunk_loss(linear, hidden, targets)
    weight = F.pad(linear.weight, (0, 0, 0, pad))
    bias = None if linear.bias is None else F.pad(linear.bias, (0, pad))
    logits = F.linear(hidden, weight, bias)[:, :vocab]
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def _vocab_size(head: nn.Module, model: Any) -> int:
    # nn.Linear and PEFT's LoRA layers have out_features; a modules_to_save wrapper forwards the lookup
    return getattr(head, "out_features", None) or unwrap_causal_lm(model).config.get_text_config().vocab_size


def chunked_causal_lm_loss(
    model: Any, batch: Mapping[str, torch.Tensor], *, chunk_tokens: int | None = None
) -> torch.Tensor:
    """Summed token cross-entropy (fp32), the head applied to ``chunk_tokens`` supervised rows at a time.

    Args:
        model: a transformers causal LM, PEFT-wrapped or not, for which :func:`check_head_split` passes.
        batch: padded (``input_ids``, ``labels``, ``attention_mask``) or packed (``input_ids``,
            ``labels``, ``position_ids``) micro-batch; labels aligned with ``input_ids``.
        chunk_tokens: rows per chunk (default: :func:`default_chunk_tokens` of the vocabulary).

    When there is more than one chunk and gradients are enabled, each chunk runs under
    ``torch.utils.checkpoint`` (non-reentrant), so at most one chunk's logits exist at a time, in the
    forward and in the backward (at the price of a second head forward per chunk). The head runs under
    the autocast state it had inside the model's forward.
    """
    split = final_hidden_states(model, batch)
    hidden, targets = _supervised(split, batch)
    size = chunk_tokens or default_chunk_tokens(_vocab_size(split.head, model))
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    # One chunk gains nothing from checkpointing: its recompute would run while the same activations
    # are alive, so it would only cost a second head forward.
    recompute = torch.is_grad_enabled() and len(targets) > size
    with split.autocast():
        # max(n, 1): a batch without targets still runs the head once on 0 rows, so every trainable
        # parameter stays in the graph (DDP expects a gradient for each) and the loss is 0.
        for start in range(0, max(len(targets), 1), size):
            rows = slice(start, start + size)
            if recompute:
                total = total + checkpoint(
                    _chunk_loss, split.head, hidden[rows], targets[rows], use_reentrant=False
                )
            else:
                total = total + _chunk_loss(split.head, hidden[rows], targets[rows])
    return total


# ------------------------------------------------------------------------------------------- fused


def check_fused(model: Any, device: torch.device | str | None = None) -> str | None:
    """Why :func:`fused_causal_lm_loss` cannot run for ``model`` on ``device`` (None when it can).

    Needs a plain ``nn.Linear`` output head (a PEFT ``modules_to_save`` copy counts; LoRA on the head
    does not), a CUDA device, an importable ``liger_kernel``, and no FSDP (it shards the head's weight,
    which the kernel reads whole). It does not check the head split: see :func:`check_head_split`.
    """
    if fsdp_launched():
        return "FSDP shards the output head's weight, which the kernel reads whole"
    try:
        linear = plain_linear(find_head(model).module)
    except HeadSplitError as exc:
        return str(exc)
    if isinstance(linear, str):
        return linear
    device = torch.device(device) if device is not None else linear.weight.device
    if device.type != "cuda" or linear.weight.device.type != "cuda":
        return f"it needs a CUDA device (the model is on {linear.weight.device}, training on {device})"
    return liger_findable()


def fused_causal_lm_loss(
    model: Any, batch: Mapping[str, torch.Tensor], *, kernel_min_rows: int | None = None
) -> torch.Tensor:
    """Summed token cross-entropy (fp32) from Liger-Kernel's fused linear cross-entropy.

    A pass with fewer than ``kernel_min_rows`` supervised rows (default: as many as make
    :data:`PLAIN_HEAD_LOGITS_BYTES` of fp32 logits) takes the plain head and cross-entropy instead (its
    weight padded to an aligned vocabulary on CUDA): the same numbers in a few large kernels instead of
    many small ones, for a transient of about three times those logits.

    The kernel gets the supervised hidden states and the head's weight and bias (those of the active
    ``modules_to_save`` copy, whose weight gradient the kernel computes); the model is not patched.
    It runs under the autocast state the head had inside the forward, as the standard loss does.

    Raises:
        RuntimeError: the head is not a plain Linear or liger_kernel is missing (see :func:`check_fused`).
    """
    split = final_hidden_states(model, batch)
    linear = plain_linear(split.head)
    if isinstance(linear, str):
        raise RuntimeError(f"fused loss: {linear}")
    hidden, targets = _supervised(split, batch)
    with split.autocast():
        # No rows: the kernel's chunking divides by the row count; keep the graph instead. Few rows: the
        # kernel still loops over about vocab / hidden chunks (65 for GPT-2), a few kernels per chunk, each
        # reading the whole head weight, where the plain head and cross-entropy are a handful of kernels.
        min_rows = (
            default_chunk_tokens(linear.out_features, PLAIN_HEAD_LOGITS_BYTES)
            if kernel_min_rows is None
            else kernel_min_rows
        )
        if len(targets) == 0 or len(targets) < min_rows:
            return aligned_linear_loss(linear, hidden, targets)
        fused = liger()
        if isinstance(fused, str):
            raise RuntimeError(f"fused loss: {fused}")
        loss = fused(
            hidden, linear.weight, targets, bias=linear.bias, ignore_index=IGNORE_INDEX, reduction="sum"
        )
    return loss.float()


# ------------------------------------------------------------------------------------------ choice


def select_loss(
    model: Any, kind: str = "auto", device: torch.device | str | None = None
) -> tuple[LossFn, str, str | None]:
    """The loss function for ``train.loss`` = ``kind``, and why a faster one was not chosen.

    ``auto`` takes ``fused`` where :func:`check_fused` passes, else ``chunked``; both only where
    :func:`check_head_split` passes, else ``standard``. Call it once at start-up, before
    ``accelerator.prepare`` or after (it runs the model once on a few tokens, in eval mode).

    Args:
        model: the model to train (PEFT-wrapped or not).
        kind: ``auto``, ``standard``, ``chunked`` or ``fused``.
        device: where training runs (default: where the head's weight is).

    Returns:
        ``(loss_fn, chosen_kind, reason)``: ``reason`` is None when ``chosen_kind`` is what was asked
        (or ``auto`` got ``fused``), else one line saying why the faster kinds were not used, for a
        warning (``auto`` -> ``standard``) or an info log (``auto`` -> ``chunked``).

    Raises:
        ConfigError: at ``train.loss``: an unknown kind, or ``chunked``/``fused`` that cannot run here.
    """
    if kind not in LOSS_KINDS:
        raise ConfigError([("train.loss", f"unknown loss {kind!r}; known: {', '.join(LOSS_KINDS)}")])
    if kind == "standard":
        return causal_lm_loss, "standard", None
    if kind == "fused" and (problem := check_fused(model, device)):
        raise ConfigError([("train.loss", f"fused: {problem}")])
    split_problem = check_head_split(model)
    if split_problem is not None:
        reason = f"the output head cannot be split off: {split_problem}"
        if kind == "auto":
            return causal_lm_loss, "standard", reason
        raise ConfigError([("train.loss", f"{kind}: {reason}")])
    if kind == "chunked":
        return chunked_causal_lm_loss, "chunked", None
    if kind == "auto" and fsdp_launched():  # the head split is not proven under FSDP's sharded head
        return (
            causal_lm_loss,
            "standard",
            "the head-split losses are not verified under FSDP, which shards the head",
        )
    fused_problem = None if kind == "fused" else check_fused(model, device)
    if fused_problem is None:
        return fused_causal_lm_loss, "fused", None
    return chunked_causal_lm_loss, "chunked", f"fused loss unavailable: {fused_problem}"
