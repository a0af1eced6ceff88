"""Config section of the training loop: optimizer and schedule unions, and the loop settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from qlora_kit.config.base import StrictModel, kind_union

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


OptimizerConfig = kind_union(AdamWTorch, AdamW8bit, PagedAdamW8bit, PagedAdamW32bit)


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


SchedulerConfig = kind_union(LinearSchedule, ConstantSchedule, CosineSchedule)


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
