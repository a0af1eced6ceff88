"""Typed run configuration: one strict pydantic model per component, composed into :class:`RunConfig`.

Every section forbids unknown keys (with a "did you mean" hint), is frozen, and documents each field
with its attribute docstring, which also becomes the JSON-schema description. Closed choices
(quantization, optimizer, scheduler, export) are discriminated unions on ``kind``; the open choice
(prompt formatters) goes through :mod:`qlora_kit.registry`.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

DType = Literal["bfloat16", "float16", "float32"]


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        # pydantic's own extra_forbidden error gives no hint; this one suggests the closest field.
        if not isinstance(data, dict):
            return data
        known = set(cls.model_fields)
        unknown = [k for k in data if k not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown key(s) {', '.join(hints)}; allowed: {', '.join(sorted(known))}")
        return data


def _kind_union(*classes: type[StrictModel]) -> Any:
    """A union discriminated on ``kind`` in which a missing ``kind`` means the first class.

    So ``train.optimizer.lr=1e-4`` works as an override without restating the optimizer's kind.
    """
    default = classes[0].model_fields["kind"].default

    def tag_of(value: Any) -> str:
        return value.get("kind", default) if isinstance(value, dict) else getattr(value, "kind", default)

    members = tuple(Annotated[cls, Tag(cls.model_fields["kind"].default)] for cls in classes)
    return Annotated[Union[members], Discriminator(tag_of)]  # noqa: UP007


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


QuantConfig = _kind_union(Bnb4bitQuant, Bnb8bitQuant, NoQuant)


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


# ----------------------------------------------------------------------------------------- data


class SourceConfig(StrictModel):
    """A dataset: a hub name, a local json/jsonl/csv/parquet file, or rows given in memory."""

    path: str | None = None
    """Hub dataset name (`yahma/alpaca-cleaned`) or a local file/directory."""
    name: str | None = None
    """Hub dataset configuration name."""
    split: str = "train"
    """Split to load."""
    rows: list[dict[str, Any]] | None = None
    """Rows given directly (Python API, tests)."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Rename columns to the names the formatter expects: `{formatter_field: dataset_column}`."""

    @model_validator(mode="after")
    def _one_origin(self) -> SourceConfig:
        if (self.path is None) == (self.rows is None):
            raise ValueError("give exactly one of `path` or `rows`")
        return self


class SubsetConfig(StrictModel):
    """The seed's subset step: `shuffle(seed=seed).select(range(n))`."""

    n: int = Field(gt=0)
    """Rows to keep."""
    seed: int = 42
    """Shuffle seed."""


class EvalSplitConfig(StrictModel):
    """Held-out data: a fraction of the training source, or a separate source."""

    fraction: float | None = Field(default=None, gt=0, lt=1)
    """Fraction of the (subset) training rows held out."""
    source: SourceConfig | None = None
    """A separate evaluation dataset."""
    seed: int = 42
    """Seed of the held-out split."""

    @model_validator(mode="after")
    def _one_origin(self) -> EvalSplitConfig:
        if (self.fraction is None) == (self.source is None):
            raise ValueError("give exactly one of `fraction` or `source`")
        return self


class FormatterSpec(StrictModel):
    """Which registered PromptFormatter renders rows, and its options."""

    kind: str = "alpaca"
    """Registered formatter name (`qlora-kit schema` lists the built-ins; plugins add more)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Formatter-specific options, validated by the formatter's own `Options` model."""

    @model_validator(mode="after")
    def _known_kind(self) -> FormatterSpec:
        from qlora_kit.registry import formatters

        formatters.validate_options(self.kind, self.options)
        return self


class DataConfig(StrictModel):
    """Data loading, prompt formatting, truncation and batching."""

    source: SourceConfig = Field(default_factory=lambda: SourceConfig(path="yahma/alpaca-cleaned"))
    """The training data."""
    subset: SubsetConfig | None = None
    """Optional random subset of the source (the seed takes 1,000 rows with seed 42)."""
    eval: EvalSplitConfig | None = None
    """Optional held-out split."""
    formatter: FormatterSpec = Field(default_factory=FormatterSpec)
    """Prompt template."""
    train_on_inputs: bool = False
    """Also train on prompt tokens (the seed does, since SFTTrainer trains on all text)."""
    max_length: int = Field(default=1024, gt=0)
    """Longest tokenized example."""
    truncation: Literal["truncate", "drop", "error"] = "truncate"
    """What happens to longer examples: cut the response, drop the row, or fail."""
    padding: Literal["longest", "max_length"] = "longest"
    """Pad each batch to its longest row (multiple of 8) or always to `max_length` (seed parity)."""
    packing: bool = False
    """Padding-free batches: a micro-batch's examples concatenated in one row, positions restarting."""
    group_by_length: bool = False
    """Batch examples of similar length together (less padding), shuffled by group."""
    skip_bad_rows: bool = False
    """Skip rows with missing or non-string fields (counted in the data report) instead of failing."""


# ---------------------------------------------------------------------------------------- train


class AdamWTorch(StrictModel):
    """torch.optim.AdamW (fused kernel where the device supports it)."""

    kind: Literal["adamw_torch"] = "adamw_torch"
    lr: float = Field(default=2e-4, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(default=0.0, ge=0)
    """Decoupled weight decay (never applied to biases and norms)."""
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


class AdamW8bit(AdamWTorch):
    """bitsandbytes 8-bit AdamW (the seed's `adamw_8bit`)."""

    kind: Literal["adamw_8bit"] = "adamw_8bit"  # type: ignore[assignment]


class PagedAdamW8bit(AdamWTorch):
    """bitsandbytes paged 8-bit AdamW (state pages out to CPU under memory pressure)."""

    kind: Literal["paged_adamw_8bit"] = "paged_adamw_8bit"  # type: ignore[assignment]


class PagedAdamW32bit(AdamWTorch):
    """bitsandbytes paged 32-bit AdamW."""

    kind: Literal["paged_adamw_32bit"] = "paged_adamw_32bit"  # type: ignore[assignment]


OptimizerConfig = _kind_union(AdamWTorch, AdamW8bit, PagedAdamW8bit, PagedAdamW32bit)


class _Warmup(StrictModel):
    warmup_ratio: float | None = Field(default=None, ge=0, lt=1)
    """Warmup as a fraction of all optimizer steps (the seed's 0.03)."""
    warmup_steps: int | None = Field(default=None, ge=0)
    """Warmup as a number of optimizer steps."""

    @model_validator(mode="after")
    def _one_warmup(self) -> _Warmup:
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise ValueError("give at most one of `warmup_ratio` or `warmup_steps`")
        return self


class ConstantSchedule(_Warmup):
    """Constant learning rate after warmup."""

    kind: Literal["constant"] = "constant"


class LinearSchedule(_Warmup):
    """Linear decay to zero after warmup."""

    kind: Literal["linear"] = "linear"


class CosineSchedule(_Warmup):
    """Cosine decay after warmup."""

    kind: Literal["cosine"] = "cosine"
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    """Floor of the decay as a fraction of the peak learning rate."""


SchedulerConfig = _kind_union(LinearSchedule, ConstantSchedule, CosineSchedule)


class TrainConfig(StrictModel):
    """The training loop: length, batching, optimization, evaluation, checkpoints, logging."""

    epochs: float = Field(default=1, gt=0)
    """Passes over the training data (ignored when `max_steps` is set)."""
    max_steps: int | None = Field(default=None, gt=0)
    """Total optimizer steps; overrides `epochs`."""
    micro_batch_size: int = Field(default=4, gt=0)
    """Rows per forward pass."""
    grad_accum: int = Field(default=1, gt=0)
    """Micro-batches per optimizer step; the loss is normalised by the supervised tokens of the window."""
    grad_checkpointing: bool = True
    """Recompute activations in the backward pass (non-reentrant) to save memory."""
    optimizer: OptimizerConfig = Field(default_factory=AdamWTorch)
    """Optimizer and its learning rate."""
    scheduler: SchedulerConfig = Field(default_factory=lambda: LinearSchedule(warmup_ratio=0.03))
    """Learning-rate schedule."""
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    """Clip the global gradient norm (None disables)."""
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = "auto"
    """Autocast: `auto` picks bf16 where supported, fp16 (with a scaler) on older GPUs, none on CPU."""
    seed: int = 42
    """Seed for adapters' init, dropout and data order."""
    log_every: int = Field(default=10, gt=0)
    """Optimizer steps between log lines."""
    eval_every: int | None = Field(default=None, gt=0)
    """Optimizer steps between evaluations (always one at the end when there is eval data)."""
    eval_batch_size: int | None = Field(default=None, gt=0)
    """Rows per evaluation forward pass (default: micro_batch_size)."""
    save_every: int | None = Field(default=None, gt=0)
    """Optimizer steps between checkpoints (always one at the end)."""
    keep_last: int = Field(default=2, gt=0)
    """Checkpoints kept."""
    resume: str | None = None
    """`auto` (latest checkpoint in output_dir) or a checkpoint path."""
    early_stopping_patience: int | None = Field(default=None, gt=0)
    """Stop after this many evaluations without eval-loss improvement."""
    generation_prompts: list[str] = Field(default_factory=list)
    """Fixed prompts generated at every evaluation and written to the output dir."""
    trackers: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)
    """Accelerate trackers to log to besides metrics.jsonl."""


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


ExportConfig = _kind_union(AdapterExport, MergedExport, NoExport)


# ------------------------------------------------------------------------------------------- run


class RunConfig(StrictModel):
    """A whole fine-tuning run."""

    output_dir: str = "runs/qlora"
    """Where checkpoints, reports, metrics and exports are written."""
    plugins: list[str] = Field(default_factory=list)
    """Python modules imported before validation (they register formatters)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    quant: QuantConfig = Field(default_factory=Bnb4bitQuant)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=AdapterExport)
