"""The Trainer: a plain Accelerate loop with token-normalised gradient accumulation.

Read :meth:`Trainer._train` and :meth:`Trainer._step` first: they are the whole algorithm. Setup and
teardown live in :class:`~qlora_kit.training.session.TrainingSession`; logging, evaluation and
checkpoints are helpers called between optimizer steps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from qlora_kit.config import TrainConfig
from qlora_kit.data.collate import PaddedCollator
from qlora_kit.errors import ConfigError, InterruptedRun, TrainingError
from qlora_kit.training.batches import BatchPlanner, Window
from qlora_kit.training.callbacks import Callback, CallbackList
from qlora_kit.training.compiling import GradientCopies, begin_pass
from qlora_kit.training.distributed import local_tensor
from qlora_kit.training.evaluation import evaluate
from qlora_kit.training.guards import check_finite_loss, check_gradients_flow, oom_message
from qlora_kit.training.interrupt import StopRequest
from qlora_kit.training.kernels import attention_backends, long_row_attention
from qlora_kit.training.loss import LossFn
from qlora_kit.training.panel import generate_panel
from qlora_kit.training.result import TrainResult
from qlora_kit.training.session import TrainingSession
from qlora_kit.training.step_stats import PendingStep, defers, send_to_host, skip_update_unless_finite

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "Trainer"]


class Trainer:
    """Fine-tunes the trainable parameters (the adapters) of a model on ``{input_ids, labels}`` rows.

    Args:
        train_cfg: the ``train`` section of the run config.
        output_dir: where checkpoints, ``metrics.jsonl``, the loss curve and generations go.
        collate_fn: rows -> batch of tensors (default: :class:`PaddedCollator` with pad id 0).
        callbacks: extensions besides ``train.callbacks``; see :class:`~qlora_kit.training.callbacks.Callback`.
        accelerator: an ``accelerate.Accelerator`` to use (default: one built from ``train_cfg``).
            It must have ``gradient_accumulation_steps=1``: the trainer accumulates itself.
        loss_fn: forward + summed token cross-entropy; default: the ``train.loss`` kind's.
        batch_planner: orders one epoch's rows into micro-batches (e.g. grouped by length).
        tokenizer: needed only for ``train_cfg.generation_prompts``.
        formatter: the run's prompt formatter: the generation prompts are formatted with it, as
            ``qlora-kit generate`` does (without one they are given to the model as written).
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
        formatter: Any = None,
    ):
        if train_cfg.generation_prompts and tokenizer is None:
            raise ConfigError(
                [("train.generation_prompts", "needs the tokenizer: pass Trainer(..., tokenizer=...)")]
            )
        self.cfg = train_cfg
        self.output_dir = Path(output_dir)
        self.collate_fn = collate_fn or PaddedCollator(pad_token_id=0)
        self.callbacks = CallbackList([*callbacks, *(spec.build() for spec in train_cfg.callbacks)])
        self.accelerator = accelerator
        self.loss_fn = loss_fn
        self.batch_planner = batch_planner
        self.tokenizer = tokenizer
        self.formatter = formatter
        self.max_new_tokens = max_new_tokens
        self.vocab_size: int | None = None

    def fit(self, model: Any, train_data: Sequence[dict[str, Any]], eval_data: Any = None) -> TrainResult:
        """Train ``model`` in place on ``train_data``; evaluate on ``eval_data`` if given.

        Resumes from a checkpoint when ``train.resume`` says so. On SIGINT/SIGTERM it saves a checkpoint
        after the current step and raises :class:`~qlora_kit.errors.InterruptedRun`. Raises TrainingError on
        a non-finite loss or vanished gradients (naming the last good checkpoint), on out-of-memory
        (naming the knobs), and when the checkpoint to resume from belongs to another run.
        """
        started = time.perf_counter()
        self.callbacks("on_setup", str(self.output_dir))
        eval_data = eval_data if eval_data is not None and len(eval_data) > 0 else None
        if self.cfg.eval_every and eval_data is None:
            raise ConfigError([("train.eval_every", "there is no eval data to evaluate on: set data.eval, "
                                "or train.eval_every: null")])  # fmt: skip
        loss_fn = self.loss_fn or self.cfg.loss.build().prepare(model)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.vocab_size = getattr(head, "out_features", None)
        session = TrainingSession(self.cfg, self.output_dir, model, train_data, collate_fn=self.collate_fn,
                                  batch_planner=self.batch_planner, accelerator=self.accelerator)  # fmt: skip
        session.loss_fn = loss_fn
        stop = StopRequest()
        try:
            with stop.installed(), attention_backends(session.device):
                self._train(session, eval_data, stop)
        except torch.OutOfMemoryError as err:
            raise TrainingError(oom_message(session.state.step + 1)) from err
        finally:
            trained = time.perf_counter() - started  # the loss curve, drawn at close, is not training
            session.close()
        return session.result(trained)

    # ------------------------------------------------------------------------------- the loop

    def _train(self, s: TrainingSession, eval_data: Any, stop: StopRequest) -> None:
        state = s.state
        # each step's loss and norm read one step late where the optimizer can skip a bad update itself
        self._deferred = defers(s.optimizer, s.device, s.accelerator.num_processes)
        self._pending: PendingStep | None = None
        self.callbacks("on_train_begin", state)
        # train.eval_at_start: the untrained model's eval loss is every curve's baseline (not on resume)
        if eval_data is not None and self.cfg.eval_at_start and state.step == 0:
            self._evaluate(s, eval_data)
        while not state.finished:
            for micro_batches in s.windows(state.epoch)[state.step_in_epoch :]:
                self._step(s, s.collate(micro_batches))
                self._between_steps(s, eval_data)
                if s.any_process(stop.requested):
                    self._interrupt(s, stop)
                if state.finished:
                    break
            else:  # every window of this epoch is done: the next epoch reshuffles the rows
                state.epoch += 1
                state.step_in_epoch = 0
        self._finish(s, eval_data)

    def _step(self, s: TrainingSession, window: Window) -> None:
        acc, state = s.accelerator, s.state
        # Normalise by the supervised tokens of the WHOLE window, counted over all processes
        # before any backward pass: a mean of per-micro-batch means over-weights short batches.
        n_tokens = s.global_sum(window.supervised_tokens)
        if n_tokens == 0:
            self._skip_empty_window(s, window)
            return
        scale = acc.num_processes / n_tokens  # DDP averages gradients over processes: undo that
        loss_sum = torch.zeros((), device=s.device)
        # gradients copied out of CUDA graphs' memory: recorded layers need it only to accumulate; compiled
        # graphs always (their single-pass steps were not measured without it)
        GradientCopies.several_passes = len(window.batches) > 1 or s.cuda_graphs
        for i, batch in enumerate(window.batches):
            last = i == len(window.batches) - 1  # gradients are all-reduced once, after the last
            if s.cuda_graphs:
                begin_pass()
            with s.no_sync(last), long_row_attention(s.device, window.long_plain[i]):
                batch_loss = s.loss_fn(s.model, batch)  # summed token cross-entropy
                acc.backward(batch_loss * scale)
            loss_sum += batch_loss.detach()
        grad_norm = acc.clip_grad_norm_(s.params, self.cfg.max_grad_norm or math.inf)
        numbers = torch.stack([acc.reduce(loss_sum, "sum"), local_tensor(grad_norm).float()])
        if self._deferred:  # read at the next step (step_stats); a non-finite step updates nothing
            self._settle(s)
            skip_update_unless_finite(s.optimizer, numbers)
            self._pending = send_to_host(numbers, state.step + 1, n_tokens)
        else:  # one host-device sync per step, for both numbers, before the update
            total, norm = numbers.tolist()
            self._record(s, state.step + 1, n_tokens, total, norm)
        s.last_lr = s.scheduler.get_last_lr()[0]
        s.optimizer.step()
        if not acc.optimizer_step_was_skipped:  # fp16 overflow: no update, so no schedule step
            s.scheduler.step()
            state.schedule_step += 1
        s.optimizer.zero_grad(set_to_none=True)
        self._count(s, window, n_tokens)

    def _record(self, s: TrainingSession, step: int, n_tokens: int, total: float, norm: float) -> None:
        """Check and record step ``step``'s loss (``total`` over ``n_tokens``) and gradient norm."""
        loss = total / n_tokens
        check_finite_loss(loss, step, s.last_checkpoint)
        s.state.zero_grad_steps = check_gradients_flow(
            norm, loss, s.state.zero_grad_steps, step, self.vocab_size, s.last_checkpoint
        )
        s.interval_losses.append(loss)
        s.last_grad_norm = norm
        s.log.advance(loss)  # the progress display shows each step's loss

    def _settle(self, s: TrainingSession) -> None:
        """Check and record the step whose numbers are still on their way (if any)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._record(s, pending.step, pending.n_tokens, *pending.read())

    def _skip_empty_window(self, s: TrainingSession, window: Window) -> None:
        logger.warning(
            "step %d: no supervised token in its %d micro-batch(es); skipped without an update",
            s.state.step + 1, len(window.batches),
        )  # fmt: skip
        s.optimizer.zero_grad(set_to_none=True)
        s.scheduler.step()  # keep the schedule aligned with the step count
        s.state.schedule_step += 1
        self._count(s, window, 0)
        s.log.advance(None)
        s.log.log({"step": s.state.step, "skipped": "no supervised tokens"})

    def _count(self, s: TrainingSession, window: Window, n_tokens: int) -> None:
        state = s.state
        tokens = s.global_sum(window.input_tokens)
        state.step += 1
        state.step_in_epoch += 1
        state.tokens += tokens
        state.supervised_tokens += n_tokens
        s.log.count_tokens(tokens)

    # --------------------------------------------------------------------- between the steps

    def _between_steps(self, s: TrainingSession, eval_data: Any) -> None:
        state, cfg = s.state, self.cfg
        s.check_memory()
        if self._due(state, eval_data is not None):
            self._settle(s)
        metrics: dict[str, Any] = {}
        if s.interval_losses and (state.step % cfg.log_every == 0 or state.step >= state.total_steps):
            metrics = s.log.log_train(state.step, self._train_record(s))
            s.interval_losses = []
        if eval_data is not None and cfg.eval_every and state.step % cfg.eval_every == 0:
            metrics = {**metrics, **self._evaluate(s, eval_data)}  # the logged record stays as logged
        if cfg.save_every and state.step % cfg.save_every == 0:
            self._save(s)
        self.callbacks("on_step_end", state, metrics)

    def _due(self, state: Any, evaluates: bool) -> bool:
        """Whether something after this step reads its numbers: a log line, an evaluation (its record), a
        checkpoint, or the end."""
        cfg, step = self.cfg, state.step
        periods = (cfg.log_every, cfg.save_every, cfg.eval_every if evaluates else None)
        return step >= state.total_steps or any(every and step % every == 0 for every in periods)

    def _train_record(self, s: TrainingSession) -> dict[str, Any]:
        state = s.state
        return {
            "epoch": round(state.epoch_float, 4),
            "loss": sum(s.interval_losses) / len(s.interval_losses),
            "lr": s.last_lr,
            "grad_norm": s.last_grad_norm,
            "tokens": state.tokens,
            "supervised_tokens": state.supervised_tokens,
        }

    def _evaluate(self, s: TrainingSession, eval_data: Any) -> dict[str, Any]:
        acc, cfg = s.accelerator, self.cfg
        started = time.perf_counter()
        bare = acc.unwrap_model(s.model)  # no DDP collectives in eval; autocast is kept
        # eval_batch_size unset: on CUDA the rows in passes of the training pass's token budget, if any
        passes = None if cfg.eval_batch_size else s.layout.eval_passes(eval_data)
        metrics = evaluate(bare, eval_data, self.collate_fn, cfg.eval_batch_size or cfg.micro_batch_size,
                           s.loss_fn, acc, passes)  # fmt: skip
        if cfg.generation_prompts and acc.is_main_process:
            generate_panel(bare, self.tokenizer, cfg.generation_prompts, s.state.step, self.output_dir,
                           self.max_new_tokens, self.formatter)  # fmt: skip
        acc.wait_for_everyone()
        s.log.exclude_time(time.perf_counter() - started)
        s.last_eval_step = s.state.step
        record = s.log.log({"step": s.state.step, **metrics})
        self.callbacks("on_evaluate", s.state, dict(record))  # callbacks get a copy of the logged record
        return metrics

    def _save(self, s: TrainingSession) -> None:
        started = time.perf_counter()
        path = s.save()
        s.log.exclude_time(time.perf_counter() - started)
        self.callbacks("on_save", s.state, str(path))

    def _interrupt(self, s: TrainingSession, stop: StopRequest) -> None:
        self._settle(s)
        if s.last_checkpoint is None or s.last_checkpoint.name != f"checkpoint-{s.state.step}":
            self._save(s)
        raise InterruptedRun(
            f"{stop.signal_name or 'a signal'}: stopped after step {s.state.step} of {s.state.total_steps} and "
            f"saved {s.last_checkpoint}. Resume with train.resume=auto (the same config and output_dir)."
        )

    def _finish(self, s: TrainingSession, eval_data: Any) -> None:
        self._settle(s)
        if s.interval_losses:  # stopped early, between two log lines
            s.log.log_train(s.state.step, self._train_record(s))
            s.interval_losses = []
        if eval_data is not None and s.last_eval_step != s.state.step:
            self._evaluate(s, eval_data)
        if s.last_checkpoint is None or s.last_checkpoint.name != f"checkpoint-{s.state.step}":
            self._save(s)
        self.callbacks("on_train_end", s.state)
