"""Config sections of the base model: where it comes from, how it is quantized, the LoRA adapter."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from qlora_kit.config.base import DType, StrictModel, kind_union

# --------------------------------------------------------------------------------------- model


class ModelConfig(StrictModel):
    """Where the base model and its tokenizer come from."""

    name_or_path: str = "distilbert/distilgpt2"
    """Hub id, local directory, or a `.gguf` file (dequantized once, cached as safetensors)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to load."""
    tokenizer: str | None = None
    """Tokenizer hub id or directory when it differs from `name_or_path`."""
    trust_remote_code: bool = False
    """Run code shipped with the model repository. Off unless you trust the source."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] | None = None
    """Attention kernel; None lets transformers choose (sdpa where available)."""
    pad_token: Literal["keep", "eos", "unk", "add"] = "eos"
    """Pad-token policy when the tokenizer has none: reuse `eos` (safe here: labels come from the
    formatter's segments and padding is masked by length, so EOS is still trained), reuse `unk`, `add` a
    new `<|pad|>` token (resizes the embeddings: the adapter then needs a base resized the same way),
    or `keep` (error if there is no pad token)."""
    model_max_length: int | None = Field(default=None, gt=0)
    """Override the tokenizer's maximum length (e.g. 1024 for GPT-2)."""
    cache_dir: str | None = None
    """Where hub downloads and dequantized GGUF conversions are cached."""


# ---------------------------------------------------------------------------------------- quant


class Bnb4bitQuant(StrictModel):
    """4-bit quantization of linear layers through bitsandbytes (QLoRA)."""

    kind: Literal["bnb_4bit"] = "bnb_4bit"
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """NormalFloat4 (best for normally distributed weights) or plain FP4."""
    double_quant: bool = True
    """Quantize the per-block absmax constants too (saves ~0.4 bits per parameter)."""
    compute_dtype: DType = "bfloat16"
    """dtype the 4-bit weights are dequantized to for matmuls; also the dtype of every
    non-quantized parameter (embeddings, norms, lm_head)."""
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = "uint8"
    """Container dtype of the packed 4-bit weights (use the compute dtype for FSDP)."""
    skip_modules: list[str] = Field(default_factory=list)
    """Module names kept in 16 bits besides the output head (which is never quantized)."""


class Bnb8bitQuant(StrictModel):
    """LLM.int8() quantization of linear layers through bitsandbytes."""

    kind: Literal["bnb_8bit"] = "bnb_8bit"
    threshold: float = 6.0
    """Outlier threshold of LLM.int8()."""
    compute_dtype: DType = "bfloat16"
    """dtype of the non-quantized parameters."""
    skip_modules: list[str] = Field(default_factory=list)
    """Module names kept in 16 bits besides the output head."""


class NoQuant(StrictModel):
    """No quantization: plain LoRA on a 16- or 32-bit base."""

    kind: Literal["none"] = "none"
    compute_dtype: DType = "bfloat16"
    """dtype of the base model's parameters."""


QuantConfig = kind_union(Bnb4bitQuant, Bnb8bitQuant, NoQuant)


# -------------------------------------------------------------------------------------- adapter


class AdapterConfig(StrictModel):
    """LoRA adapter settings (names as in the LoRA paper and PEFT)."""

    r: int = Field(default=8, gt=0)
    """Rank of the low-rank update."""
    alpha: float = Field(default=16, gt=0)
    """Scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) with rsLoRA)."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the adapter input."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases are trained."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names (suffixes) to adapt, or `all-linear`: every linear layer except the output head."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r)."""
    modules_to_save: list[str] = Field(default_factory=list)
    """Modules trained in full and saved with the adapter (e.g. `lm_head` after adding tokens)."""
    peft_overrides: dict[str, Any] = Field(default_factory=dict)
    """Any other `peft.LoraConfig` argument; validated by building the real LoraConfig."""
