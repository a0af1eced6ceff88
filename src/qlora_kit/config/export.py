"""Config section of the export: adapter only, merged 16-bit model, or nothing."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from qlora_kit.config.base import StrictModel, kind_union

# --------------------------------------------------------------------------------------- export


class AdapterExport(StrictModel):
    """Save the LoRA adapter in PEFT format (plus tokenizer and run config)."""

    kind: Literal["adapter"] = "adapter"


class MergedExport(StrictModel):
    """Save the adapter, then merge it into a 16-bit base saved as sharded safetensors."""

    kind: Literal["merged"] = "merged"
    dtype: Literal["float16", "bfloat16"] = "bfloat16"
    """dtype of the merged model (the seed uses float16)."""
    max_shard_size: str = "2GB"
    """Largest safetensors shard."""
    merge_base: Literal["original", "dequantized"] = "dequantized"
    """Merge into the `original` 16-bit weights, or into the `dequantized` NF4 weights the adapter
    was trained against. Both errors are reported either way."""
    max_mean_kl: float = Field(default=0.05, gt=0)
    """Verification tolerance: mean per-token KL(adapter model || merged model) on held-out prompts, in
    nats. A 16-bit merge into the `dequantized` base stays well below it; a merge into the `original`
    weights of a model whose NF4 rounding matters does not."""
    max_abs_logit_diff: float | None = Field(default=None, gt=0)
    """Optional extra tolerance on the largest absolute logit difference. Off by default: in 16-bit
    compute a few large logits (e.g. at the first position) move by whole units from rounding alone."""


class NoExport(StrictModel):
    """Keep only the training checkpoints."""

    kind: Literal["none"] = "none"


ExportConfig = kind_union(AdapterExport, MergedExport, NoExport)
