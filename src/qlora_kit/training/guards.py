"""Checks between optimizer steps that stop a run which can no longer learn, naming why and how to go on."""

from __future__ import annotations

import math
from pathlib import Path

from qlora_kit.errors import TrainingError

ZERO_GRAD_PATIENCE = 3
"""Steps in a row with an exactly zero gradient norm before a run is stopped."""


def check_finite_loss(loss: float, step: int, last_checkpoint: Path | None) -> None:
    """Stop before a non-finite loss updates the weights.

    Raises:
        TrainingError: naming the step, the last good checkpoint and how to resume from it.
    """
    if math.isfinite(loss):
        return
    raise TrainingError(
        f"non-finite loss ({loss}) at step {step}; the weights were not updated. {_resume_hint(last_checkpoint)} "
        "Check the data, or use bf16 instead of fp16."
    )


def check_gradients_flow(
    grad_norm: float, loss: float, zero_steps: int, step: int, vocab_size: int | None,
    last_checkpoint: Path | None,
) -> int:  # fmt: skip
    """Count steps with an exactly zero gradient norm; stop after :data:`ZERO_GRAD_PATIENCE` in a row.

    An exactly zero norm with a positive loss means nothing trains any more: typically a learning rate
    so high that the model saturated (its loss then sits at ln(vocabulary), the loss of a uniform guess).

    Returns:
        The updated count of zero-gradient steps in a row.

    Raises:
        TrainingError: naming the steps, the loss level, and how to resume with a lower learning rate.
    """
    if grad_norm != 0.0 or loss == 0.0:
        return 0
    zero_steps += 1
    if zero_steps < ZERO_GRAD_PATIENCE:
        return zero_steps
    uniform = ""
    if vocab_size and abs(loss - math.log(vocab_size)) < 0.05:
        uniform = (
            f" and the loss {loss:.4f} sits at ln({vocab_size}) = {math.log(vocab_size):.4f}, a uniform guess"
        )
    raise TrainingError(
        f"training stopped at step {step}: the gradients have been exactly zero for {zero_steps} steps"
        f"{uniform}, so nothing learns any more (a learning rate too high for this model usually does this). "
        f"{_resume_hint(last_checkpoint, before_step=step - zero_steps + 1)}"
    )


def _resume_hint(last_checkpoint: Path | None, before_step: int | None = None) -> str:
    if last_checkpoint is not None and (before_step is None or _step_of(last_checkpoint) < before_step):
        return (f"Last good checkpoint: {last_checkpoint}; resume from it with a lower learning rate "
                f"(train.resume={last_checkpoint} train.optimizer.lr=...).")  # fmt: skip
    return "No good checkpoint yet: lower train.optimizer.lr and start again (--overwrite)."


def _step_of(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def oom_message(step: int) -> str:
    """What to say when a step runs out of memory."""
    return (
        f"out of memory at step {step}. Knobs that lower memory, roughly by effect: "
        "train.micro_batch_size (raise train.grad_accum to keep the effective batch), data.max_length, "
        "data.packing: true (no padding), train.grad_checkpointing: true, "
        "train.optimizer.kind: paged_adamw_8bit, train.eval_batch_size. `qlora-kit plan CONFIG` estimates the "
        "memory of a setting before you run it."
    )
