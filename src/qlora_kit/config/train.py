"""Config section of the training loop. The optimizer, schedule, loss and callbacks are component kinds
(:mod:`qlora_kit.training.optim`, :mod:`~qlora_kit.training.schedule`, :mod:`~qlora_kit.training.loss`,
:mod:`~qlora_kit.training.callbacks`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from qlora_kit.registry import callbacks, losses, optimizers, schedulers
from qlora_kit.strict import StrictModel

# ---------------------------------------------------------------------------------------- train


OptimizerSpec = optimizers.field_type("adamw_torch")
"""A `train.optimizer` section: `{kind: <registered optimizer>, lr: ..., ...}`."""
SchedulerSpec = schedulers.field_type("linear")
"""A `train.scheduler` section: `{kind: <registered schedule>, warmup_ratio: ..., ...}`."""
LossSpec = losses.field_type("auto")
"""A `train.loss` section: a registered loss kind, as a name or `{kind: ..., <options>}`."""
CallbackSpec = callbacks.field_type()
"""One entry of `train.callbacks`: `{kind: <registered callback>, <options>}`."""


class TrainConfig(StrictModel):
    """The training loop: length, batching, optimization, evaluation, checkpoints, logging."""

    epochs: float = Field(default=1, gt=0)
    """Passes over the training data (ignored when `max_steps` is set)."""
    max_steps: int | None = Field(default=None, gt=0)
    """Total optimizer steps; overrides `epochs`."""
    micro_batch_size: int = Field(default=4, gt=0)
    """Rows per forward pass."""
    micro_batch_tokens: int | Literal["auto"] | None = "auto"
    """Token budget of one forward pass. A step's rows (micro_batch_size x grad_accum) are laid out in as few
    passes as fit it (packed without padding where the attention allows: `data.packing`); the step and its
    token-normalised loss stay the same. `auto`: what fits the device's memory, one pass per step where it
    can; null: micro_batch_size rows per pass (the reference recipe's layout)."""
    grad_accum: int = Field(default=1, gt=0)
    """Micro-batches per optimizer step; the loss is normalised by the supervised tokens of the window."""
    grad_checkpointing: bool | Literal["auto"] = "auto"
    """Recompute each decoder layer in the backward pass (non-reentrant) to save memory. `auto`: off
    when a step fits the device's memory with a margin; else on for the fewest decoder layers that let a
    step fit; else on for all (`qlora-kit plan` shows the estimate; the first step's measured peak is
    checked against it, and checkpointing turned on for every layer if it came within the margin)."""
    activation_offload: bool | Literal["auto"] = "auto"
    """Keep the checkpointed layers' inputs in pinned CPU memory, copied on a side CUDA stream (CUDA
    only; needs checkpointing). `true`: every layer's. `auto`: only when a step does not fit without it,
    and then only the first layers' inputs, the fewest that make it fit (the rest stay on the GPU)."""
    compile: bool | Literal["auto", "cuda_graphs"] = "auto"
    """Compile each decoder layer with torch.compile: fewer kernels and host operations per step, at a
    compile cost in the first steps (about 18 s for a 1B Llama on an H200; again once when pass shapes
    vary). Numerics equal eager to float rounding. `auto`: on for CUDA models with a hidden size of 2048 or
    more, with one process, where it was measured to pay (on an H200 the 8B shape +32% tokens/s, the 1B
    +9-23%); off for smaller models (distilgpt2's W1 job gained nothing), on the CPU (SmolLM2-135M's step
    went from 6.19 to 6.93 s on 2 cores) and under DDP / FSDP (not measured there). Set false for short
    runs, where the compilation is not recovered. `cuda_graphs`: compiled with CUDA graphs too (one launch
    per layer and pass; on other devices `auto`): for small models whose steps the host bounds, with passes
    of one shape (`data.padding: max_length`); SmolLM2-135M's step on an H200 took 0.039 s against 0.13 s
    compiled and 0.27 s eager. Each new pass shape records new graphs."""
    cuda_graphs: bool | Literal["auto"] = False
    """Record each decoder layer's forward and backward as CUDA graphs at the second training pass of each
    shape and replay them after (one launch per layer and pass; no compilation): for small models whose
    GPU steps the host bounds: the quickstart on an H200 trained in 6.0 s against 29.5 s compiled, 64/64
    both. CUDA only, one process, layers not checkpointed or compiled (`compile: auto` then stays off; an
    explicit `compile: true` wins and nothing is recorded; a log line says which). With a token budget
    packed passes are filled to quarters of it (few shapes); otherwise passes of few shapes
    (`data.pad_to_multiple_of`, `data.padding: max_length`) record few times. `auto`: record where
    nothing else speeds the layers up (`compile: auto` decides first) and this device allows, silently
    off elsewhere (the CPU), as `examples/configs/seed_improved.yaml` asks."""
    memory_budget_gib: float | None = Field(default=None, gt=0)
    """Most device memory (GiB) the `auto` settings may plan a step to use (default: the device's). They
    take the fastest layout whose planned peak fits it with a 10% margin: a lower budget trades speed for
    memory (checkpointing, offload, smaller passes), e.g. to share the GPU or train lean. Explicit settings
    are kept as given; the first step's measured peak is checked against the budget."""
    optimizer: OptimizerSpec = optimizers.default("adamw_torch")
    """Optimizer and its learning rate."""
    scheduler: SchedulerSpec = schedulers.default("linear", warmup_ratio=0.03)
    """Learning-rate schedule."""
    loss: LossSpec = losses.default("auto")
    """How the loss is computed from the model's last hidden states: `auto` takes the fastest exact
    kind (fused, chunked or standard: the same numbers, computed with less memory)."""
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
    eval_at_start: bool = True
    """Evaluate once before the first step (when there is eval data), so every eval curve starts at the
    untrained model's loss (not repeated when a run resumes)."""
    eval_batch_size: int | None = Field(default=None, gt=0)
    """Rows per evaluation forward pass. Default: on CUDA the rows laid out into passes of the training pass's
    token budget (`micro_batch_tokens`), which they fit with room to spare (no gradients are kept): W1's
    evaluation on an H200 ~560 -> ~76 ms; elsewhere, or without a budget, `micro_batch_size` rows (on 2 CPU
    cores, which compute, fewer larger passes were slower: 6.9 s against 9.0-10.9 s)."""
    save_every: int | None = Field(default=None, gt=0)
    """Optimizer steps between checkpoints (always one at the end)."""
    keep_last: int = Field(default=2, gt=0)
    """Checkpoints kept."""
    resume: str | None = None
    """`auto` (latest checkpoint in output_dir) or a checkpoint path."""
    callbacks: list[CallbackSpec] = Field(default_factory=list)
    """Registered callbacks, e.g. `[{kind: early_stopping, patience: 3}]`."""
    generation_prompts: list[str] = Field(default_factory=list)
    """Instructions (or user messages, for chat formats) answered greedily at every evaluation and written
    to `generations.jsonl`. Each is formatted with the run's `data.formatter` up to where the response
    starts and the reply stops at its stop tokens, exactly as `qlora-kit generate --prompt` does, so
    give the bare instruction, not a formatted prompt."""
    trackers: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)
    """Accelerate trackers to log to besides metrics.jsonl."""

    @model_validator(mode="after")
    def _offload_needs_checkpointing(self) -> TrainConfig:
        if self.activation_offload is True and self.grad_checkpointing is False:
            raise ValueError(
                "train.activation_offload: true needs train.grad_checkpointing: true or auto (it offloads the "
                "inputs of checkpointed layers)"
            )
        return self
