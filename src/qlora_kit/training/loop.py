"""The Trainer: a plain Accelerate loop with token-normalised gradient accumulation.

Read :meth:`Trainer._train` first: it is the whole algorithm. Everything else (setup, logging,
evaluation, checkpoints) is a helper it calls between optimizer steps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qlora_kit.config import TrainConfig
from qlora_kit.data.collate import PaddedCollator
from qlora_kit.errors import ConfigError, TrainingError
from qlora_kit.training.batches import BatchPlanner, Window
from qlora_kit.training.callbacks import Callback, CallbackList
from qlora_kit.training.evaluation import evaluate, generate_panel
from qlora_kit.training.kernels import attention_backends
from qlora_kit.training.loss import LossFn
from qlora_kit.training.setup import Run, finish_run, oom_message, prepare_run

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    history: list[dict[str, Any]]
    """Every record written to ``metrics.jsonl`` (train, eval and skipped steps)."""
    train_loss: float | None
    """Mean loss per supervised token over the last logging interval."""
    eval_loss: float | None
    eval_perplexity: float | None
    steps: int
    epochs: float
    tokens: int
    """Input tokens processed (padding excluded), all processes together."""
    supervised_tokens: int
    train_time_s: float
    peak_memory_gb: float | None
    """Peak CUDA memory allocated by this process (None on CPU)."""
    checkpoints: list[str] = field(default_factory=list)
    stopped_early: bool = False


class Trainer:
    """Fine-tunes the trainable parameters (the adapters) of a model on ``{input_ids, labels}`` rows.

    Args:
        train_cfg: the ``train`` section of the run config.
        output_dir: where checkpoints, ``metrics.jsonl``, the loss curve and generations go.
        collate_fn: rows -> batch of tensors (default: :class:`PaddedCollator` with pad id 0).
        callbacks: extensions; see :class:`~qlora_kit.training.callbacks.Callback`.
        accelerator: an ``accelerate.Accelerator`` to use (default: one built from ``train_cfg``).
            It must have ``gradient_accumulation_steps=1``: the trainer accumulates itself.
        loss_fn: forward + summed token cross-entropy; default: the `train.loss` kind's.
        batch_planner: orders one epoch's rows into micro-batches (e.g. grouped by length).
        tokenizer: needed only for ``train_cfg.generation_prompts``.
        max_new_tokens: length of the generation panel's completions.
    """

    def __init__(
        self,
        train_cfg: TrainConfig,
        *,
        output_dir: str | Path,
        collate_fn: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]] | None = None,
        callbacks: Sequence[Callback] = (),
        accelerator: Any = None,
        loss_fn: LossFn | None = None,
        batch_planner: BatchPlanner | None = None,
        tokenizer: Any = None,
        max_new_tokens: int = 64,
    ):
        if train_cfg.generation_prompts and tokenizer is None:
            raise ConfigError(
                [("train.generation_prompts", "needs the tokenizer: pass Trainer(..., tokenizer=...)")]
            )
        self.cfg = train_cfg
        self.output_dir = Path(output_dir)
        self.collate_fn = collate_fn or PaddedCollator(pad_token_id=0)
        configured = [spec.build() for spec in train_cfg.callbacks]
        self.callbacks = CallbackList([*callbacks, *configured])
        self.accelerator = accelerator
        self.loss_fn = loss_fn
        self._loss: LossFn | None = loss_fn
        self.batch_planner = batch_planner
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens

    def fit(self, model: Any, train_data: Sequence[dict[str, Any]], eval_data: Any = None) -> TrainResult:
        """Train ``model`` in place on ``train_data``; evaluate on ``eval_data`` if given.

        Resumes from a checkpoint when ``train.resume`` says so. Raises TrainingError on a non-finite
        loss (naming the step; earlier checkpoints stay), on out-of-memory (naming the knobs), and
        when the checkpoint to resume from belongs to a different config or data.
        """
        started = time.perf_counter()
        if eval_data is not None and len(eval_data) == 0:
            eval_data = None
        self._loss = self.loss_fn or self.cfg.loss.build().prepare(model)
        run = prepare_run(self, model, train_data)
        try:
            with attention_backends(run.accelerator.device):
                self._train(run, eval_data)
        except torch.OutOfMemoryError as err:
            raise TrainingError(oom_message(run.state.step + 1)) from err
        finally:
            finish_run(run)
        return run.result(time.perf_counter() - started)

    # ------------------------------------------------------------------------------- the loop

    def _train(self, run: Run, eval_data: Any) -> None:
        acc, state, cfg = run.accelerator, run.state, self.cfg
        model, optimizer, scheduler = run.model, run.optimizer, run.scheduler
        self.callbacks("on_train_begin", state)
        while state.step < state.total_steps and not state.should_stop:
            window = run.next_window()  # grad_accum collated micro-batches, already on the device
            # Normalise by the supervised tokens of the WHOLE window, counted over all processes
            # before any backward pass: a mean of per-micro-batch means over-weights short batches.
            n_tokens = run.global_sum(window.supervised_tokens)
            if n_tokens == 0:
                self._skip_empty_window(run, window)
                continue
            scale = acc.num_processes / n_tokens  # DDP averages gradients over processes: undo that
            loss_sum = torch.zeros((), device=acc.device)
            for i, batch in enumerate(window.batches):
                # Gradients are all-reduced across processes only on the window's last micro-batch.
                with acc.no_sync(model) if i < len(window.batches) - 1 else nullcontext():
                    batch_loss = self._loss(model, batch)  # summed token cross-entropy
                    acc.backward(batch_loss * scale)
                loss_sum += batch_loss.detach()
            loss = acc.reduce(loss_sum, "sum").item() / n_tokens
            if not math.isfinite(loss):
                raise TrainingError(
                    f"non-finite loss ({loss}) at step {state.step + 1}; the weights were not updated. "
                    f"Last good checkpoint: {run.last_checkpoint or 'none yet'}. Lower the learning rate, "
                    "check the data, or use bf16 instead of fp16."
                )
            grad_norm = acc.clip_grad_norm_(run.params, cfg.max_grad_norm or math.inf)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            if not acc.optimizer_step_was_skipped:  # fp16 overflow: no update, so no schedule step
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            self._after_step(
                run, window, {"loss": loss, "lr": lr, "grad_norm": grad_norm}, n_tokens, eval_data
            )
        self._finish(run, eval_data)

    def _skip_empty_window(self, run: Run, window: Window) -> None:
        logger.warning(
            "step %d: no supervised token in its %d micro-batch(es); skipped without an update",
            run.state.step + 1, len(window.batches),
        )  # fmt: skip
        run.optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()  # keep the schedule aligned with the step count
        self._after_step(run, window, None, 0, None)
        run.log.log({"step": run.state.step, "skipped": "no supervised tokens"})

    # --------------------------------------------------------------------- between the steps

    def _after_step(
        self, run: Run, window: Window, step: dict[str, Any] | None, n_tokens: int, eval_data: Any
    ) -> None:
        state, cfg = run.state, self.cfg
        tokens = run.global_sum(window.input_tokens)
        state.step += 1
        state.step_in_epoch += 1
        state.tokens += tokens
        state.supervised_tokens += n_tokens
        run.log.count_tokens(tokens)
        run.log.advance()
        metrics: dict[str, Any] = {}
        if step is not None:
            run.interval_losses.append(step["loss"])
            run.last_grad_norm, run.last_lr = step["grad_norm"], step["lr"]
        last = state.step >= state.total_steps
        if run.interval_losses and (state.step % cfg.log_every == 0 or last):
            metrics = run.log.log_train(state.step, self._train_record(run))
            run.interval_losses = []
        if eval_data is not None and cfg.eval_every and state.step % cfg.eval_every == 0:
            metrics = {**metrics, **self._evaluate(run, eval_data)}  # the logged record stays as logged
        if cfg.save_every and state.step % cfg.save_every == 0:
            self._save(run)
        self.callbacks("on_step_end", state, metrics)

    def _train_record(self, run: Run) -> dict[str, Any]:
        state = run.state
        return {
            "epoch": round(state.epoch_float, 4),
            "loss": sum(run.interval_losses) / len(run.interval_losses),
            "lr": run.last_lr,
            "grad_norm": float(run.last_grad_norm),
            "tokens": state.tokens,
            "supervised_tokens": state.supervised_tokens,
        }

    def _evaluate(self, run: Run, eval_data: Any) -> dict[str, Any]:
        acc, cfg = run.accelerator, self.cfg
        started = time.perf_counter()
        bare = acc.unwrap_model(run.model)  # no DDP collectives in eval; autocast is kept
        metrics = evaluate(bare, eval_data, self.collate_fn, cfg.eval_batch_size or cfg.micro_batch_size,
                           self._loss, acc)  # fmt: skip
        if cfg.generation_prompts and acc.is_main_process:
            generate_panel(bare, self.tokenizer, cfg.generation_prompts, run.state.step, self.output_dir,
                           self.max_new_tokens)  # fmt: skip
        acc.wait_for_everyone()
        run.log.exclude_time(time.perf_counter() - started)
        run.last_eval_step = run.state.step
        record = run.log.log({"step": run.state.step, **metrics})
        self.callbacks("on_evaluate", run.state, dict(record))  # callbacks get a copy of the logged record
        return metrics

    def _save(self, run: Run) -> None:
        started = time.perf_counter()
        path = run.checkpoints.save(run.accelerator, run.state, run.model)
        run.log.exclude_time(time.perf_counter() - started)
        run.last_checkpoint = path
        self.callbacks("on_save", run.state, str(path))

    def _finish(self, run: Run, eval_data: Any) -> None:
        if run.interval_losses:  # stopped early, between two log lines
            run.log.log_train(run.state.step, self._train_record(run))
            run.interval_losses = []
        if eval_data is not None and run.last_eval_step != run.state.step:
            self._evaluate(run, eval_data)
        if run.last_checkpoint is None or run.last_checkpoint.name != f"checkpoint-{run.state.step}":
            self._save(run)
        self.callbacks("on_train_end", run.state)
