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
    targets = shift_targets(batch["labels"], batch.get("position_ids"))
    return int((targets != IGNORE_INDEX).sum())


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum (not mean) of the cross-entropies of the positions whose target is not ``-100``, in fp32."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def causal_lm_loss(model: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The default :class:`LossFn`: forward pass without labels, then :func:`token_cross_entropy`."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits
    return token_cross_entropy(logits, shift_targets(batch["labels"], batch.get("position_ids")))
