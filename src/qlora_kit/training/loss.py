"""Token-normalised causal-LM loss, computed by the library rather than by ``model(labels=...)``.

Loss kinds (the `train.loss` section) are in :mod:`qlora_kit.training.loss_kinds`; the ``standard`` kind
is :func:`causal_lm_loss`.

The loop needs the SUM of token cross-entropies of a micro-batch, because it divides by the number of
supervised tokens of the whole accumulation window (a mean of per-batch means over-weights short
batches). Keeping the loss a separate callable means a fused or chunked linear + cross-entropy can
replace :func:`causal_lm_loss` without touching the loop: it only has to honour :class:`LossFn`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from qlora_kit.formatting.tokens import IGNORE_INDEX


class LossFn(Protocol):
    """Runs the model on a batch and returns the summed cross-entropy of its supervised tokens."""

    def __call__(self, model: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor: ...


def shift_targets(labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Targets aligned with the logits: position ``t`` predicts ``labels[t + 1]``.

    The labels are shifted left instead of slicing the logits, so the (large) logits tensor is never
    copied. The last position has no target. In a packed row, ``position_ids`` restarting at 0 marks
    the first token of the next example, which the previous example must not be trained to predict.
    """
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    if position_ids is not None:
        starts = F.pad(position_ids[:, 1:] == 0, (0, 1), value=False)
        targets = targets.masked_fill(starts, IGNORE_INDEX)
    return targets


def count_supervised(batch: Mapping[str, torch.Tensor]) -> int:
    """Number of tokens of a collated batch that contribute to the loss."""
    return len(_target_positions(batch)[0])


def _target_positions(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The flattened positions that have a target, and all positions' targets (flattened)."""
    targets = shift_targets(batch["labels"], batch.get("position_ids")).flatten()
    return (targets != IGNORE_INDEX).nonzero().flatten(), targets


TARGET_KEYS = ("target_positions", "target_ids")
"""Keys :func:`with_targets` adds to a batch: the loss reads them, the model never gets them."""


def with_targets(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """``batch`` (on the CPU, before it moves) with its supervised positions found on the CPU, and their
    number.

    Adds ``target_positions`` (indices into the flattened ``[B * T]`` positions that have a target) and
    ``target_ids`` (those targets). The head-split losses gather the hidden states with them: selecting
    with a boolean mask on the device makes the host wait for the device to learn how many rows there are
    (two waits a pass, and one more in the backward pass), which kept a W1 step bound by the host.
    """
    positions, targets = _target_positions(batch)
    return {**batch, "target_positions": positions, "target_ids": targets[positions]}, len(positions)


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys of ``batch`` the model takes: all but the labels and :data:`TARGET_KEYS`."""
    return {k: v for k, v in batch.items() if k != "labels" and k not in TARGET_KEYS}


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum (not mean) of the cross-entropies of the positions whose target is not ``-100``, in fp32."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def causal_lm_loss(model: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The default :class:`LossFn`: forward pass without labels, then :func:`token_cross_entropy`."""
    logits = model(**model_inputs(batch), use_cache=False).logits
    return token_cross_entropy(logits, shift_targets(batch["labels"], batch.get("position_ids")))
