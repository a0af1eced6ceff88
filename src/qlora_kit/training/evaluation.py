"""Evaluation without collecting logits, and :func:`inference_mode`, which evaluation, the generation
panel (:mod:`qlora_kit.training.panel`) and generation use.

They run the model in eval mode under ``no_grad`` and then restore train mode and the 4-bit guard
(bitsandbytes' CPU inference path repacks 4-bit weights in place, which breaks LoRA gradients).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from qlora_kit.model.quant import keep_4bit_weights_trainable
from qlora_kit.training.batches import to_device
from qlora_kit.training.kernels import is_long_plain_row, long_row_attention
from qlora_kit.training.loss import LossFn, causal_lm_loss, with_targets

GENERATIONS_FILE = "generations.jsonl"
"""The generation panel's records (:func:`qlora_kit.training.panel.generate_panel`)."""


@contextmanager
def inference_mode(model: Any):
    """Eval mode and no_grad inside; train mode and trainable 4-bit weights after, even on error.

    Layers compiled by ``train.compile`` run eagerly inside: a no-grad graph would be one more compilation
    for a few passes."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            yield
    finally:
        model.train(was_training)
        keep_4bit_weights_trainable(model)


def evaluate(
    model: Any,
    rows: Sequence[dict[str, Any]],
    collate_fn: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
    loss_fn: LossFn = causal_lm_loss,
    accelerator: Any = None,
    passes: Sequence[Sequence[int]] | None = None,
) -> dict[str, float]:
    """Mean loss per supervised token over ``rows`` and its perplexity.

    Token losses are summed batch by batch (nothing but two scalars is kept): ``batch_size`` consecutive
    rows each, or the given ``passes`` (row indices, e.g. laid out by a token budget). Under an
    ``accelerator`` with several processes each takes every ``num_processes``-th batch and the sums are
    added across processes; without one, everything runs on the model's device.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else next(model.parameters()).device
    if passes is None:
        passes = [
            range(start, min(start + batch_size, len(rows))) for start in range(0, len(rows), batch_size)
        ]
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    tokens = torch.zeros((), dtype=torch.float64, device=device)
    with inference_mode(model):
        for indices in passes[rank::world]:
            batch, supervised = with_targets(collate_fn([rows[i] for i in indices]))
            tokens += supervised  # counted on the CPU, before the move: no device sync
            long_plain = is_long_plain_row(batch)
            batch = {k: to_device(v, device) for k, v in batch.items()}
            with long_row_attention(device, long_plain):
                loss_sum += loss_fn(model, batch).double()
    if accelerator is not None:
        loss_sum, tokens = accelerator.reduce(loss_sum, "sum"), accelerator.reduce(tokens, "sum")
    if tokens.item() == 0:
        return {"eval_loss": float("nan"), "eval_perplexity": float("nan"), "eval_tokens": 0}
    loss = (loss_sum / tokens).item()
    return {
        "eval_loss": loss,
        "eval_perplexity": math.exp(min(loss, 700.0)),
        "eval_tokens": int(tokens.item()),
    }
