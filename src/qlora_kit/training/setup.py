"""Setting up and tearing down a training run: accelerator, optimizer, schedule, data order, resume."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qlora_kit.compat import reset_stale_accelerate_state, unregister_checkpointed_object
from qlora_kit.errors import ConfigError, DataError
from qlora_kit.model.quant import keep_4bit_weights_trainable
from qlora_kit.training.batches import Window, epoch_batches, row_lengths, windows
from qlora_kit.training.checkpoint import (
    CheckpointManager,
    adapter_fingerprint,
    check_resumable,
    config_fingerprint,
    data_fingerprint,
    read_state,
    register_adapter_only_hooks,
)
from qlora_kit.training.evaluation import GENERATIONS_FILE
from qlora_kit.training.state import TrainerState
from qlora_kit.training.tracking import MetricsLogger, truncate_jsonl

if TYPE_CHECKING:
    from qlora_kit.training.loop import Trainer, TrainResult

logger = logging.getLogger(__name__)


def resolve_mixed_precision(choice: str, device: torch.device | None = None) -> str:
    """``auto`` -> bf16 on GPUs that support it, fp16 (with a loss scaler) on older GPUs, none on CPU.

    ``device`` is where the model lives (default: ``cuda`` when available); a CPU model gets no
    autocast under ``auto`` even on a machine with a GPU.
    """
    if choice != "auto":
        return choice
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if on_cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def oom_message(step: int) -> str:
    """What to say when a step runs out of memory."""
    return (
        f"out of memory at step {step}. Knobs that lower memory, roughly by effect: "
        "train.micro_batch_size (raise train.grad_accum to keep the effective batch), data.max_length, "
        "data.packing: true (no padding), train.grad_checkpointing: true, "
        "train.optimizer.kind: paged_adamw_8bit, train.eval_batch_size."
    )


@dataclass
class Run:
    """The live objects of one ``fit`` call."""

    accelerator: Any
    owns_accelerator: bool
    model: Any
    optimizer: Any
    scheduler: Any
    state: TrainerState
    checkpoints: CheckpointManager
    log: MetricsLogger
    window_iter: Iterator[Window]
    hooks: list[Any] = field(default_factory=list)
    interval_losses: list[float] = field(default_factory=list)
    last_grad_norm: Any = 0.0
    last_lr: float = 0.0
    last_eval_step: int | None = None
    last_checkpoint: Path | None = None

    @property
    def params(self) -> list[torch.nn.Parameter]:
        """The trainable parameters."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def next_window(self) -> Window:
        """The next accumulation window (epochs roll over by themselves)."""
        return next(self.window_iter)

    def global_sum(self, value: int) -> int:
        """``value`` summed over all processes (no collective, and no device sync, on one process)."""
        if self.accelerator.num_processes == 1:
            return value
        return int(self.accelerator.reduce(torch.tensor(value, device=self.accelerator.device), "sum"))

    def result(self, seconds: float) -> TrainResult:
        """Summarise the run."""
        from qlora_kit.training.loop import TrainResult

        history = self.log.history
        train = [r for r in history if "loss" in r]
        evals = [r for r in history if "eval_loss" in r]
        device = self.accelerator.device
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        return TrainResult(
            history=history,
            train_loss=train[-1]["loss"] if train else None,
            eval_loss=evals[-1]["eval_loss"] if evals else None,
            eval_perplexity=evals[-1]["eval_perplexity"] if evals else None,
            steps=self.state.step,
            epochs=self.state.epoch_float,
            tokens=self.state.tokens,
            supervised_tokens=self.state.supervised_tokens,
            train_time_s=seconds,
            peak_memory_gb=peak,
            checkpoints=[str(p) for p in self.checkpoints.checkpoints()],
            stopped_early=self.state.should_stop,
        )


def prepare_run(trainer: Trainer, model: Any, train_data: Sequence[dict[str, Any]]) -> Run:
    """Build the accelerator, optimizer and schedule, prepare them, and resume if configured.

    Every check that can refuse the run (empty data, a checkpoint of another run) happens before
    the model is handed to the accelerator, so a refusal leaves the model untouched.
    """
    cfg = trainer.cfg
    if len(train_data) == 0:
        raise DataError("the training data is empty")
    missing = {"input_ids", "labels"} - set(train_data[0])
    if missing:
        raise DataError(f"training rows need input_ids and labels; row 0 lacks {sorted(missing)}")
    acc, owns = _accelerator(trainer, model)
    plan = _data_plan(trainer, train_data, acc)
    steps_per_epoch = len(plan(0))
    if steps_per_epoch == 0:
        raise DataError(f"{len(train_data)} training rows make no batch for {acc.num_processes} processes")
    total = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    fingerprints = {
        "train": config_fingerprint(cfg),
        "data": data_fingerprint(train_data, trainer.collate_fn),
        "adapter": adapter_fingerprint(model),
        "processes": acc.num_processes,
    }
    checkpoints = CheckpointManager(trainer.output_dir, cfg.keep_last)
    resume_from = checkpoints.resolve(cfg.resume)
    if resume_from is not None:
        check_resumable(read_state(resume_from).fingerprints, fingerprints, resume_from)
    elif cfg.resume == "auto":
        logger.info("train.resume=auto: no checkpoint in %s, starting from scratch", trainer.output_dir)
    if acc.is_main_process:
        trainer.output_dir.mkdir(parents=True, exist_ok=True)
        checkpoints.clean_temporary()

    from accelerate.utils import set_seed

    set_seed(cfg.seed)  # dropout; a resumed run then restores the checkpoint's RNG states
    if acc.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(acc.device)
    _set_grad_checkpointing(model, cfg.grad_checkpointing)
    keep_4bit_weights_trainable(model)
    model.train()
    optimizer = cfg.optimizer.build().create(model)
    scheduler = cfg.scheduler.build().create(optimizer, total)
    model, optimizer = acc.prepare(model, optimizer)
    acc.register_for_checkpointing(scheduler)
    hooks = register_adapter_only_hooks(acc, model)
    state = TrainerState(total_steps=total, steps_per_epoch=steps_per_epoch, fingerprints=fingerprints)
    if resume_from is not None:
        try:
            state = checkpoints.load(acc, resume_from)
        except BaseException:
            _release(acc, model, scheduler, hooks)
            raise
        logger.info("resumed from %s at step %d (epoch %.2f)", resume_from, state.step, state.epoch_float)
    if acc.is_main_process:
        truncate_jsonl(trainer.output_dir / GENERATIONS_FILE, state.step)
    if owns and cfg.trackers:
        acc.init_trackers("qlora_kit", config=_flat_config(cfg.model_dump(mode="json")))

    run = Run(
        accelerator=acc, owns_accelerator=owns, model=model, optimizer=optimizer, scheduler=scheduler,
        state=state, checkpoints=checkpoints, hooks=hooks,
        log=MetricsLogger(acc, trainer.output_dir, total, start_step=state.step),
        window_iter=_window_iter(state, plan, train_data, trainer.collate_fn, acc.device),
    )  # fmt: skip
    run.last_checkpoint = resume_from
    if any("eval_loss" in r and r["step"] == state.step for r in run.log.history):
        run.last_eval_step = state.step  # resuming a finished run does not evaluate it again
    return run


def finish_run(run: Run) -> None:
    """Close the logs, give the model back as it came (own forward, trainable 4-bit weights), end trackers."""
    acc = run.accelerator
    run.log.close()
    _release(acc, run.model, run.scheduler, run.hooks)
    if run.owns_accelerator:
        if acc.trackers:
            acc.end_training()
        acc.free_memory()


def _release(acc: Any, model: Any, scheduler: Any, hooks: list[Any]) -> None:
    for hook in hooks:
        hook.remove()
    unregister_checkpointed_object(acc, scheduler)  # registered for checkpointing by this run only
    acc.unwrap_model(model, keep_fp32_wrapper=False)  # restores the model's own forward (no autocast)
    keep_4bit_weights_trainable(model)


def _data_plan(trainer: Trainer, rows: Any, acc: Any) -> Callable[[int], list[list[list[int]]]]:
    """``epoch -> this process's windows`` (lists of micro-batches of row indices)."""
    cfg = trainer.cfg
    # the default planner only needs the row count; a length-grouping one needs every length
    lengths = row_lengths(rows) if trainer.batch_planner else range(len(rows))

    def plan(epoch: int) -> list[list[list[int]]]:
        micro = epoch_batches(lengths, cfg.micro_batch_size, cfg.seed, epoch, trainer.batch_planner,
                              acc.process_index, acc.num_processes)  # fmt: skip
        return windows(micro, cfg.grad_accum)

    return plan


def _accelerator(trainer: Trainer, model: Any) -> tuple[Any, bool]:
    if trainer.accelerator is not None:
        acc, owns = trainer.accelerator, False
    else:
        cfg = trainer.cfg
        device = next(model.parameters()).device
        acc = _new_accelerator(
            cpu=device.type == "cpu",
            mixed_precision=resolve_mixed_precision(cfg.mixed_precision, device),
            log_with=list(cfg.trackers) or None,
            project_dir=str(trainer.output_dir),
        )
        owns = True
    if acc.gradient_accumulation_steps != 1:
        # accelerator.backward would divide the loss again, on top of the token normalisation
        raise ConfigError([("train.grad_accum", "pass an Accelerator with gradient_accumulation_steps=1; "
                            "the Trainer accumulates over train.grad_accum itself")])  # fmt: skip
    return acc, owns


def _new_accelerator(**kwargs: Any) -> Any:
    """An Accelerator, even after an earlier fit in this process used another device or precision.

    Accelerate keeps its device and precision in process-wide state that a second Accelerator cannot
    change (it raises, or silently keeps the old device). In a single-process run, that state is
    reset when it disagrees with this run's model; a distributed launch is left to accelerate.
    """
    from accelerate import Accelerator

    reset_stale_accelerate_state(kwargs["cpu"], kwargs["mixed_precision"])
    return Accelerator(**kwargs)


def _set_grad_checkpointing(model: Any, enabled: bool) -> None:
    # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_*; accept both
    prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    if enabled and hasattr(model, f"{prefix}_checkpointing_enable"):
        # non-reentrant: works with frozen inputs (no enable_input_require_grads) and keeps RNG exact
        kwargs = {f"{prefix}_checkpointing_kwargs": {"use_reentrant": False}}
        getattr(model, f"{prefix}_checkpointing_enable")(**kwargs)
    elif not enabled and hasattr(model, f"{prefix}_checkpointing_disable"):
        getattr(model, f"{prefix}_checkpointing_disable")()


def _window_iter(state: TrainerState, plan: Any, rows: Any, collate_fn: Any, device: Any) -> Iterator[Window]:
    """Windows from the state's position on: the epoch's order is rebuilt from (seed, epoch), and the
    windows a resumed run already consumed are skipped without being collated."""
    while True:
        for micro_batches in plan(state.epoch)[state.step_in_epoch :]:
            yield Window.collate(rows, micro_batches, collate_fn, device)
        state.epoch += 1
        state.step_in_epoch = 0


def _flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalars only, dotted keys (tensorboard's hparams accept nothing else)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
