"""A loss kind, `label_smoothing`: cross-entropy against targets smoothed towards the uniform distribution.

It honours the :class:`~qlora_kit.training.loss.LossFn` contract: run the model on a batch and return the
SUM of the supervised tokens' losses (the loop divides by the supervised tokens of the whole accumulation
window), computed in fp32, with packed rows' boundaries respected by ``shift_targets``.

    train: {loss: {kind: label_smoothing, smoothing: 0.1}}
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from qlora_kit import StrictModel, losses
from qlora_kit.formatting.tokens import IGNORE_INDEX
from qlora_kit.training.loss import LossFn, shift_targets

logger = logging.getLogger(__name__)


def smoothed_loss(model: Any, batch: Mapping[str, torch.Tensor], smoothing: float) -> torch.Tensor:
    """Summed label-smoothed cross-entropy of the supervised tokens of ``batch``."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits
    targets = shift_targets(batch["labels"], batch.get("position_ids"))
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum",
        label_smoothing=smoothing,
    )  # fmt: skip


@losses.register("label_smoothing")
class LabelSmoothingLoss:
    """Cross-entropy with label smoothing (the model's full logits, summed over supervised tokens)."""

    class Options(StrictModel):
        smoothing: float = Field(default=0.1, ge=0, lt=1)
        """Probability mass spread uniformly over the vocabulary (0 is the standard loss)."""

    def __init__(self, config: Any):
        self.config = config

    def prepare(self, model: Any) -> LossFn:
        """The loss function the Trainer calls (for training and evaluation alike)."""
        # A warning, not info: the eval loss and perplexity change meaning, which a reader of metrics must know.
        logger.warning(
            "train.loss=label_smoothing (smoothing %s): train and eval losses include the smoothing term; "
            "compare them only with runs that use the same smoothing", self.config.smoothing,
        )  # fmt: skip
        return functools.partial(smoothed_loss, smoothing=self.config.smoothing)
