"""Merge verification: the merged model's logits against the adapter model's on held-out prompts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from qlora_kit.export.files import model_device

_FALLBACK_PROMPTS = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "The quick brown fox jumps over the lazy dog. Then it",
    "Question: what is two plus three? Answer:",
    "Write a short list of three colours:",
)


def verification_inputs(
    tokenizer: Any, rows: Sequence[dict[str, Any]] | None = None, n: int = 8, max_tokens: int = 128
) -> list[list[int]]:
    """Token ids to compare logits on: the first ``n`` held-out rows (cut to ``max_tokens``), or a few
    fixed prompts when no rows are given."""
    if rows is not None and len(rows) > 0:
        return [list(rows[i]["input_ids"][:max_tokens]) for i in range(min(n, len(rows)))]
    return [tokenizer(text, add_special_tokens=True)["input_ids"][:max_tokens] for text in _FALLBACK_PROMPTS]


def logits_of(model: Any, inputs: list[list[int]]) -> list[torch.Tensor]:
    """Float32 CPU logits of each input, one forward pass each (no padding, so nothing to mask).

    Runs in eval mode under no_grad and leaves the model as it was (train mode, trainable 4-bit weights).
    A float16 model on the CPU computes in float32 from its own weights (:func:`upcast_on_cpu`).
    """
    from qlora_kit.training.evaluation import inference_mode

    device = model_device(model)
    out = []
    with inference_mode(model), upcast_on_cpu(model):
        for ids in inputs:
            logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits
            out.append(logits[0].float().cpu())
    return out


def computes_upcast(model: Any) -> bool:
    """True for a model that :func:`logits_of` runs in float32: on the CPU, every parameter float16."""
    params = list(model.parameters())
    return model_device(model).type == "cpu" and all(p.dtype == torch.float16 for p in params)


@contextmanager
def upcast_on_cpu(model: Any) -> Iterator[None]:
    """Inside, a float16 model on the CPU (:func:`computes_upcast`) holds its weights in float32.

    float16 matmuls on a CPU are emulated: a distilgpt2-shaped forward of 128 tokens took 7.1 s in float16
    against 0.2 s in float32 on two cores, so verifying a float16 merge took 46 s. float16 -> float32 ->
    float16 is exact, so the weights checked are the ones saved, and they are restored bit for bit.
    Buffers keep their dtype.
    """
    if not computes_upcast(model):
        yield
        return
    params = list(model.parameters())  # tied weights appear once
    for param in params:
        param.data = param.data.float()
    try:
        yield
    finally:
        for param in params:
            param.data = param.data.half()


def compare_logits(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> dict[str, float]:
    """Max absolute logit difference, KL(reference || candidate) per token (mean and max) and top-1
    agreement, over the columns both share (a vocabulary grown by an added pad token is cut)."""
    max_diff, kls, agree, tokens = 0.0, [], 0, 0
    for ref, cand in zip(reference, candidate, strict=True):
        width = min(ref.shape[-1], cand.shape[-1])
        ref, cand = ref[:, :width], cand[:, :width]
        max_diff = max(max_diff, (ref - cand).abs().max().item())
        log_p, log_q = ref.log_softmax(-1), cand.log_softmax(-1)
        kls.append((log_p.exp() * (log_p - log_q)).sum(-1))
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        tokens += ref.shape[0]
    kl = torch.cat(kls)
    return {
        "max_abs_logit_diff": round(max_diff, 6),
        "mean_kl": float(f"{kl.mean().item():.3e}"),
        "max_kl": float(f"{kl.max().item():.3e}"),
        "top1_agreement": round(agree / max(tokens, 1), 6),
        "tokens": tokens,
    }
