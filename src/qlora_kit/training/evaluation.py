"""Evaluation without collecting logits, and the fixed generation panel.

Both run the model in eval mode under ``no_grad`` and then restore train mode and the 4-bit guard
(bitsandbytes' CPU inference path repacks 4-bit weights in place, which breaks LoRA gradients).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from qlora_kit.formatting.tokens import pad_token_id
from qlora_kit.model.quant import keep_4bit_weights_trainable
from qlora_kit.training.loss import LossFn, causal_lm_loss, count_supervised

GENERATIONS_FILE = "generations.jsonl"


@contextmanager
def inference_mode(model: Any):
    """Eval mode and no_grad inside; train mode and trainable 4-bit weights after, even on error."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
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
) -> dict[str, float]:
    """Mean loss per supervised token over ``rows`` and its perplexity.

    Token losses are summed batch by batch (nothing but two scalars is kept). Under an
    ``accelerator`` with several processes each takes every ``num_processes``-th batch and the sums are
    added across processes; without one, everything runs on the model's device.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else next(model.parameters()).device
    starts = list(range(0, len(rows), batch_size))[rank::world]
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    tokens = torch.zeros((), dtype=torch.float64, device=device)
    with inference_mode(model):
        for start in starts:
            batch = collate_fn([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            tokens += count_supervised(batch)  # on the CPU, before the move: no device sync
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
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


def generate_panel(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    step: int,
    output_dir: Path,
    max_new_tokens: int = 64,
) -> list[dict[str, Any]]:
    """Greedy completions of the same ``prompts`` at each evaluation, appended to ``generations.jsonl``.

    Prompts are given to the model as written (already in the training prompt format).
    """
    records = []
    device = next(model.parameters()).device
    pad_id = pad_token_id(tokenizer)
    with inference_mode(model):
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").to(device)
            out = model.generate(
                **ids, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True, pad_token_id=pad_id
            )
            completion = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
            records.append({"step": step, "prompt": prompt, "completion": completion})
    with (Path(output_dir) / GENERATIONS_FILE).open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return records
