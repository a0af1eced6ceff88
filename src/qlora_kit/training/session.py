"""A training session: the live objects of one :meth:`Trainer.fit`, from setup to teardown.

Three things hold a run's state, each for its own reason: the :class:`~qlora_kit.training.Trainer`
holds what the user configured (config, callbacks, loss); the :class:`TrainingSession` holds the live
objects (accelerator, prepared model, optimizer, schedule, logger) and what the loop carries between
steps; the :class:`~qlora_kit.training.state.TrainerState` holds the progress a checkpoint saves.
"""

from __future__ import annotations

import functools
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from qlora_kit.errors import DataError
from qlora_kit.model.activations import lean_forward
from qlora_kit.model.quant import keep_4bit_weights_trainable
from qlora_kit.planning.live import check_first_step
from qlora_kit.training.accelerator import flat_config, make_accelerator
from qlora_kit.training.batches import Window
from qlora_kit.training.checkpoint import CheckpointManager, read_state_file
from qlora_kit.training.distributed import (
    check_fsdp_settings,
    check_sharded_forward,
    gather_4bit_weights_uncast,
    is_fsdp,
    probe_ids,
    probe_logits,
    reshard_root,
)
from qlora_kit.training.evaluation import GENERATIONS_FILE
from qlora_kit.training.layout import StepLayout, apply_memory_layout, lean_on_every_layer
from qlora_kit.training.result import TrainResult
from qlora_kit.training.resume import adapter_fingerprint, check_resumable, data_fingerprint
from qlora_kit.training.speedups import passes_for_graphs, speed_up_layers
from qlora_kit.training.state import TrainerState
from qlora_kit.training.tracking import MetricsLogger, truncate_jsonl

logger = logging.getLogger(__name__)


class TrainingSession:
    """Sets up a run (accelerator, optimizer, schedule, resume), serves its batches, tears it down.

    Every check that can refuse the run (empty data, a checkpoint of another run or a damaged one)
    happens before the model is handed to the accelerator, so a refusal leaves the model untouched.

    Args:
        cfg: The ``train`` section.
        output_dir: Where checkpoints and logs go.
        model: The model with its adapters (trainable parameters).
        rows: Training rows with ``input_ids`` and ``labels``.
        collate_fn: Rows -> batch of tensors.
        batch_planner: Orders an epoch's rows into micro-batches (default: shuffled).
        accelerator: An ``accelerate.Accelerator`` to use (default: one made from ``cfg``).
    """

    def __init__(
        self,
        cfg: Any,
        output_dir: Path,
        model: Any,
        rows: Sequence[dict[str, Any]],
        *,
        collate_fn: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
        batch_planner: Any = None,
        accelerator: Any = None,
    ):
        _check_rows(rows)
        self.cfg, self.output_dir, self.rows, self.collate_fn = cfg, Path(output_dir), rows, collate_fn
        self.batch_planner = batch_planner
        self.accelerator, self.owns_accelerator = make_accelerator(cfg, model, accelerator, self.output_dir)
        acc = self.accelerator
        self._memory_checked = False
        self.layout = StepLayout(cfg, rows, collate_fn, batch_planner, acc, model)  # passes per step
        self.memory = self.layout.memory  # checkpointing, offload and the token budget, decided together
        logger.info("memory: %s", self.memory.describe())
        steps_per_epoch = len(self.windows(0))
        if steps_per_epoch == 0:
            raise DataError(f"{len(rows)} training rows make no batch for {acc.num_processes} processes")
        total = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
        fingerprints = {
            "train": cfg.model_dump(mode="json"),
            "data": data_fingerprint(rows),
            "adapter": adapter_fingerprint(model),
            "processes": acc.num_processes,
        }
        self.checkpoints = CheckpointManager(self.output_dir, cfg.keep_last)
        resume_from, changes = self._resume_target(fingerprints)
        self._prepare(model, total)
        self.state = TrainerState(
            total, steps_per_epoch, run_id=uuid.uuid4().hex[:12], fingerprints=fingerprints
        )
        self.resumed_from: Path | None = None
        if resume_from is not None:
            try:
                self._resume(resume_from, changes, total, fingerprints)
            except BaseException:
                self._release()
                raise
        self.checkpoints.run_id = self.state.run_id
        self._set_peak_hyperparameters()
        self.scheduler = cfg.scheduler.build().create(self.optimizer, total, self.state.schedule_step)
        self._open_logs()
        # what the loop carries between steps
        self.interval_losses: list[float] = []
        self.last_grad_norm: float = 0.0
        self.last_lr: float = 0.0
        self.last_eval_step: int | None = self.state.step if self._evaluated_at(self.state.step) else None
        self.last_checkpoint: Path | None = self.resumed_from
        self.loss_fn: Any = None  # set by the Trainer: the loss the loop and evaluation call

    # --------------------------------------------------------------------------------- setup

    def _resume_target(self, fingerprints: dict[str, Any]) -> tuple[Path | None, list[str]]:
        path = self.checkpoints.resolve(self.cfg.resume)
        if path is None:
            if self.cfg.resume == "auto":
                logger.info("train.resume=auto: no checkpoint in %s, starting from scratch", self.output_dir)
            return None, []
        self.checkpoints.require_intact(path)
        saved = read_state_file(path)["trainer"]["fingerprints"]
        return path, check_resumable(saved, fingerprints, path)

    def _prepare(self, model: Any, total: int) -> None:
        from accelerate.utils import set_seed

        acc, cfg = self.accelerator, self.cfg
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.checkpoints.clean_temporary()
        set_seed(cfg.seed)  # dropout; a resumed run then restores the checkpoint's generator states
        if acc.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(acc.device)
        self._offload = apply_memory_layout(model, self.memory)
        self._lean = lean_forward(model, autocast=acc.mixed_precision != "no")  # before recording/compiling
        # cuda_graphs: the compiled layers record graphs (the loop marks passes); _graphs: eager ones do
        self.cuda_graphs, self._graphs = speed_up_layers(model, cfg, acc.device, self._offload is not None)
        self.collate_fn = passes_for_graphs(self._graphs, self.collate_fn, self.layout, total)
        keep_4bit_weights_trainable(model)
        model.train()
        optimizer = cfg.optimizer.build().create(model)
        if is_fsdp(acc):  # prove the sharded forward equals the unsharded one before training on it
            check_fsdp_settings(cfg, model)
            gather_4bit_weights_uncast(acc, model)
            ids = probe_ids(model)
            before = probe_logits(model, ids, acc)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        if is_fsdp(acc):
            logger.info("FSDP forward check: %.2g relative difference",
                        check_sharded_forward(before, probe_logits(self.model, ids, acc)))  # fmt: skip
            reshard_root(self.model)  # the check's forward left the root's parameters gathered

    def check_memory(self) -> None:
        """After this session's first step (once): check its measured peak against the plan, and turn
        checkpointing on if it was off and the step came within the margin of the device's memory
        (numerics do not change)."""
        if self._memory_checked:
            return
        self._memory_checked = True
        if check_first_step(self.memory, self.device):
            what = lean_on_every_layer(self.accelerator.unwrap_model(self.model), self.memory)
            logger.warning(
                "memory: the first step used more than planned; turning %s on for every layer", what
            )

    def _resume(self, path: Path, changes: list[str], total: int, fingerprints: dict[str, Any]) -> None:
        saved = self.checkpoints.load(self.accelerator, self.model, self.optimizer, path)
        self.state = TrainerState.from_dict(saved["trainer"])
        self.state.total_steps, self.state.fingerprints = total, fingerprints
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        self.resumed_from = path
        logger.info("resumed from %s at step %d (epoch %.2f)%s", path, self.state.step, self.state.epoch_float,
                    "; changed on resume: " + "; ".join(changes) if changes else "")  # fmt: skip

    def _set_peak_hyperparameters(self) -> None:
        """The configured learning rate and weight decay, also over a resumed optimizer's saved ones
        (a resume may lower the learning rate)."""
        opt_cfg = self.cfg.optimizer
        for group in self.optimizer.param_groups:
            if "lr" in group:
                group["lr"] = opt_cfg.lr
            if "weight_decay" in group and group["params"] and group["params"][0].ndim >= 2:
                group["weight_decay"] = getattr(opt_cfg, "weight_decay", group["weight_decay"])

    def _open_logs(self) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            truncate_jsonl(self.output_dir / GENERATIONS_FILE, self.state.step)
        if self.owns_accelerator and self.cfg.trackers:
            acc.init_trackers("qlora_kit", config=flat_config(self.cfg.model_dump(mode="json")))
        self.log = MetricsLogger(acc, self.output_dir, self.state.total_steps, start_step=self.state.step,
                                 log_every=self.cfg.log_every)  # fmt: skip

    def _evaluated_at(self, step: int) -> bool:
        # resuming a finished run does not evaluate it again
        return any("eval_loss" in r and r["step"] == step for r in self.log.history)

    @property
    def device(self) -> torch.device:
        """Where batches go."""
        return self.accelerator.device

    def windows(self, epoch: int) -> list[list[list[int]]]:
        """This process's windows of ``epoch``: one per optimizer step, each a list of forward passes."""
        return self.layout.windows(epoch)

    def collate(self, micro_batches: list[list[int]]) -> Window:
        """A window's micro-batches collated and on the device."""
        return Window.collate(self.rows, micro_batches, self.collate_fn, self.device)

    def global_sum(self, value: int) -> int:
        """``value`` summed over all processes (no collective, and no device sync, on one process)."""
        if self.accelerator.num_processes == 1:
            return value
        return int(self.accelerator.reduce(torch.tensor(value, device=self.device), "sum"))

    def any_process(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process (so every process stops at the same step)."""
        return self.global_sum(int(flag)) > 0

    def no_sync(self, last: bool) -> AbstractContextManager:
        """No gradient all-reduce except on a window's last micro-batch."""
        return nullcontext() if last else self.accelerator.no_sync(self.model)

    @functools.cached_property
    def params(self) -> list[torch.nn.Parameter]:
        """The trainable parameters (listed once: a model's walk costs milliseconds a step)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def save(self) -> Path:
        """Write a checkpoint of the current step (every process must call this)."""
        scaler = getattr(self.accelerator, "scaler", None)
        extra = {"scaler": scaler.state_dict() if scaler is not None else None}
        path = self.checkpoints.save(self.accelerator, self.model, self.optimizer, self.state, extra)
        self.last_checkpoint = path
        return path

    # ------------------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Close the logs, give the model back as it came (own forward, trainable 4-bit weights), end trackers."""
        acc = self.accelerator
        self.log.close()
        self._release()
        if self.owns_accelerator:
            if acc.trackers:
                acc.end_training()
            acc.free_memory()

    def _release(self) -> None:
        for name in ("_offload", "_graphs", "_lean"):  # hooks, recorded graphs, swapped modules
            if getattr(self, name, None) is not None:
                getattr(self, name).remove()
                setattr(self, name, None)
        self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)  # restores the model's own forward
        keep_4bit_weights_trainable(self.model)

    def result(self, seconds: float) -> TrainResult:
        """Summarise the run."""
        history = self.log.history
        train = [r for r in history if "loss" in r]
        evals = [r for r in history if "eval_loss" in r]
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
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
            resumed_from=str(self.resumed_from) if self.resumed_from else None,
        )


# ------------------------------------------------------------------------------------- helpers


def _check_rows(rows: Sequence[dict[str, Any]]) -> None:
    if len(rows) == 0:
        raise DataError("the training data is empty")
    missing = {"input_ids", "labels"} - set(rows[0])
    if missing:
        raise DataError(f"training rows need input_ids and labels; row 0 lacks {sorted(missing)}")
