"""Callbacks: how to extend the loop without subclassing the Trainer.

A callback overrides any of the no-op hooks of :class:`Callback`. Hooks receive the live
:class:`~qlora_kit.training.state.TrainerState`; setting ``state.should_stop = True`` ends the run
after the current step (with a final checkpoint). An exception raised in a hook stops the run
at once; checkpoints already written stay valid, so the run can be resumed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from qlora_kit.registry import callbacks
from qlora_kit.strict import StrictModel
from qlora_kit.training.state import TrainerState

logger = logging.getLogger(__name__)


class Callback:
    """Base class of trainer callbacks; every hook is optional."""

    def on_setup(self, output_dir: str) -> None:
        """When ``fit`` starts, with the run's output directory (for callbacks that write files)."""

    def on_train_begin(self, state: TrainerState) -> None:
        """After setup and any resume, before the first step."""

    def on_step_end(self, state: TrainerState, metrics: dict[str, Any]) -> None:
        """After each optimizer step, its logging, evaluation and checkpoint."""

    def on_evaluate(self, state: TrainerState, metrics: dict[str, Any]) -> None:
        """After each evaluation, with ``eval_loss`` and ``eval_perplexity``."""

    def on_save(self, state: TrainerState, path: str) -> None:
        """After a checkpoint is complete at ``path``."""

    def on_train_end(self, state: TrainerState) -> None:
        """After the last step and the final checkpoint."""


@callbacks.register("early_stopping")
class EarlyStopping(Callback):
    """Stop when the eval loss has not improved by more than `min_delta` for `patience` evaluations.

    Its counters live in the TrainerState, so they survive a resume. From Python:
    ``EarlyStopping(EarlyStopping.Config(patience=3))``.
    """

    class Options(StrictModel):
        patience: int = Field(gt=0)
        """Evaluations without improvement before the run stops."""
        min_delta: float = Field(default=0.0, ge=0)
        """Smallest decrease of the eval loss that counts as an improvement."""

    def __init__(self, config: Any):
        self.patience = config.patience
        self.min_delta = config.min_delta

    def on_evaluate(self, state: TrainerState, metrics: dict[str, Any]) -> None:
        loss = metrics["eval_loss"]
        if state.best_eval_loss is None or loss < state.best_eval_loss - self.min_delta:
            state.best_eval_loss = loss
            state.evals_without_improvement = 0
            return
        state.evals_without_improvement += 1
        if state.evals_without_improvement >= self.patience:
            logger.info(
                "early stopping at step %d: eval loss %.4f has not improved on %.4f for %d evaluations",
                state.step, loss, state.best_eval_loss, self.patience,
            )  # fmt: skip
            state.should_stop = True


class CallbackList:
    """Calls a hook on every callback, in order."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = list(callbacks)

    def __call__(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)  # duck-typed callbacks may define only some hooks
            if method is not None:
                method(*args)
