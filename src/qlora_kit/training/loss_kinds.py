"""Loss kinds (the `train.loss` section), registered in :data:`qlora_kit.registry.losses`.

A kind's ``prepare(model)`` returns the :class:`~qlora_kit.training.loss.LossFn` the Trainer calls, so a
kind can choose its implementation once it sees the model:

- ``standard``: the model's full logits, then cross-entropy (:func:`~qlora_kit.training.loss.causal_lm_loss`);
- ``chunked``: the head applied to chunks of supervised positions, recomputed in backward: never the whole
  logits tensor (:func:`~qlora_kit.training.head_loss.chunked_causal_lm_loss`), any device;
- ``fused``: Liger-Kernel's fused linear cross-entropy (CUDA, a plain Linear head);
- ``auto`` (the default): fused where it runs, else chunked, else standard, checked on the model.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from pydantic import Field

from qlora_kit.registry import losses
from qlora_kit.strict import StrictModel
from qlora_kit.training.head_loss import chunked_causal_lm_loss, select_loss
from qlora_kit.training.loss import LossFn, causal_lm_loss

logger = logging.getLogger(__name__)


class _LossKind:
    def __init__(self, config: Any = None):
        self.config = config


@losses.register("standard")
class StandardLoss(_LossKind):
    """The model's full logits, then the summed cross-entropy of the supervised tokens in fp32."""

    def prepare(self, model: Any) -> LossFn:
        """The loss function to train ``model`` with."""
        return causal_lm_loss


@losses.register("chunked")
class ChunkedLoss(_LossKind):
    """The output head and cross-entropy on chunks of the supervised positions, each chunk recomputed
    in the backward pass: the whole logits tensor never exists. Any device; LoRA on the head works."""

    class Options(StrictModel):
        chunk_tokens: int | None = Field(default=None, gt=0)
        """Positions per chunk; default: as many as make 256 MiB of fp32 logits."""

    def prepare(self, model: Any) -> LossFn:
        select_loss(model, "chunked")  # refuses a model whose logits are more than head(hidden)
        return functools.partial(chunked_causal_lm_loss, chunk_tokens=self.config.chunk_tokens)


@losses.register("fused")
class FusedLoss(_LossKind):
    """Liger-Kernel's fused linear + cross-entropy on the head's weight (CUDA, `pip install liger-kernel`)."""

    def prepare(self, model: Any) -> LossFn:
        return select_loss(model, "fused")[0]


@losses.register("auto")
class AutoLoss(_LossKind):
    """The fastest loss that is exact for this model: fused, else chunked, else standard."""

    def prepare(self, model: Any) -> LossFn:
        loss_fn, kind, reason = select_loss(model, "auto")
        if kind == "standard":
            logger.warning("train.loss=auto: using the standard loss (%s)", reason)
        else:
            logger.info("train.loss=auto: using the %s loss%s", kind, f" ({reason})" if reason else "")
        return loss_fn
