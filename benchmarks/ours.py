"""qlora_kit as a benchmark system: the library's own components on fixed-length token rows.

ModelLoader -> prepare_for_training -> AdapterBuilder -> Trainer, configured by a config dict (NF4 +
double quant, bf16 compute, LoRA r16 on all linear layers, one optimizer step per micro-batch), as
``recipe.run`` composes them, minus data files and export. Steps are timed by a Trainer callback that
synchronizes the device before reading the clock.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_common import LORA, Clock, StepLog


def base_config(model_dir: str, optimizer: str = "paged_adamw_8bit") -> dict[str, Any]:
    """The W2/W3 run config before overrides (library defaults for everything not named here)."""
    return {
        "model": {"name_or_path": str(model_dir)},
        "quant": {"kind": "bnb_4bit", "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"},
        "adapter": {"r": LORA["r"], "alpha": LORA["alpha"], "target_modules": "all-linear"},
        "train": {
            "grad_accum": 1, "optimizer": {"kind": optimizer, "lr": LORA["lr"]},
            "scheduler": {"kind": "constant"}, "log_every": 1, "seed": 0,
        },
    }  # fmt: skip


def tolerant_config(data: dict[str, Any], overrides: Sequence[str]) -> tuple[Any, dict[str, str]]:
    """``load_config(data, overrides)``, dropping each override this version of the library rejects.

    Knobs are added to the library over time (``train.loss``, ``train.activation_offload``, ...); the
    same harness command must still run on a tree that lacks them. Rejected overrides are returned with
    the library's reason and recorded in the result, never silently lost.
    """
    from qlora_kit.config.io import load_config
    from qlora_kit.errors import ConfigError

    kept: list[str] = []
    ignored: dict[str, str] = {}
    for item in overrides:
        try:
            load_config(data, [*kept, item])
            kept.append(item)
        except ConfigError as exc:
            ignored[item] = "; ".join(f"{path}: {msg}" for path, msg in exc.errors)[:300]
            print(f"[ours] override {item!r} ignored: {ignored[item]}", file=sys.stderr)
    return load_config(data, kept), ignored


def _adapter(adapter_cfg: Any) -> Any:
    """The adapter the `adapter` section builds (``adapter.build()`` since adapter kinds; before them, the
    tree had ``AdapterBuilder(cfg.adapter)``: kept so the harness also measures older commits)."""
    if hasattr(adapter_cfg, "build"):
        return adapter_cfg.build()
    from qlora_kit.model import AdapterBuilder

    return AdapterBuilder(adapter_cfg)


def _in_order(lengths: Sequence[int], micro_batch_size: int, generator: Any) -> list[list[int]]:
    """The rows in the order given, as the peers' plain loop takes them: the same rows in each step, so the
    systems' losses compare step by step (the Trainer's default shuffle gave some steps one row twice)."""
    n = len(lengths)
    return [list(range(i, min(i + micro_batch_size, n))) for i in range(0, n, micro_batch_size)]


class _StepTimer:
    """Trainer callback: wall time, loss and gradient norm of every optimizer step."""

    def __init__(self, device: Any, log: StepLog):
        self.clock, self.log = Clock(device), log

    def on_train_begin(self, state: Any) -> None:
        self.clock.start()

    def on_step_end(self, state: Any, metrics: dict[str, Any]) -> None:
        self.clock.lap(self.log)
        if "loss" in metrics:  # log_every=1: every step's record
            self.log.losses.append(metrics["loss"])
            self.log.grad_norms.append(metrics["grad_norm"])


class _MemoryDecision(logging.Handler):
    """Keeps the Trainer's ``memory: ...`` line (what `auto` checkpointing, offload and budget resolved to)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.text: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:  # this handler stands in for logging's last resort: keep them
            print(f"[ours] {record.levelname.lower()}: {message}", file=sys.stderr)
        if message.startswith("memory: "):
            self.text = message.removeprefix("memory: ")


class OursSession:
    """A loaded qlora_kit model, trained step by step on token rows.

    Args:
        model_dir: a model directory or `.gguf` file.
        device: where the model lives.
        overrides: dotted config overrides (unknown ones are dropped and reported).
        optimizer: ``train.optimizer.kind``.
    """

    def __init__(
        self, model_dir: str, device: str, overrides: Sequence[str] = (), optimizer: str = "paged_adamw_8bit"
    ):
        from accelerate.utils import set_seed

        from qlora_kit.model import ModelLoader, prepare_for_training

        self.device = device
        self.cfg, self.ignored = tolerant_config(base_config(model_dir, optimizer), overrides)
        started = time.perf_counter()
        model, self.tokenizer = ModelLoader(self.cfg.model, self.cfg.quant, device=device).load()
        model = prepare_for_training(model, self.cfg.train.grad_checkpointing)  # as recipe.run does
        set_seed(self.cfg.train.seed)
        self.model = _adapter(self.cfg.adapter).apply(model)
        self.config = self.model.config
        self.collator: str | None = None  # which one `data` resolved to (packing or padding), once trained
        self.memory: str | None = (
            None  # what the Trainer decided for checkpointing/offload/budget, once trained
        )
        self.load_seconds = time.perf_counter() - started

    def knobs(self) -> dict[str, Any]:
        """The resolved config (every default filled in) and the overrides this tree rejected."""
        resolved = self.cfg.model_dump(mode="json")
        resolved.pop("output_dir", None)
        from qlora_kit.model.lora_dropout import LightDropoutLinear

        return {"config": resolved, "ignored_overrides": self.ignored, "collator": self.collator,
                "memory": self.memory, "light_in_compiled": LightDropoutLinear.in_compiled}  # fmt: skip

    def train(self, rows: list[list[int]], batch: int, steps: int) -> StepLog:
        """``steps`` optimizer steps of ``batch`` rows each, through ``Trainer.fit``."""
        from qlora_kit.data import make_collator
        from qlora_kit.training import Trainer

        log = StepLog()
        train_cfg = self.cfg.train.model_copy(update={"max_steps": steps, "micro_batch_size": batch})
        collate = make_collator(self.cfg.data, self.tokenizer,
                                attn_implementation=getattr(self.config, "_attn_implementation", None))  # fmt: skip
        self.collator = type(collate).__name__
        out = Path(tempfile.mkdtemp(prefix="qk-bench-run-"))
        decision = _MemoryDecision()
        session_log = logging.getLogger("qlora_kit.training.session")
        session_log.addHandler(decision)
        previous_level = session_log.level
        session_log.setLevel(logging.INFO)
        try:
            trainer = Trainer(train_cfg, output_dir=out, collate_fn=collate, batch_planner=_in_order,
                              callbacks=[_StepTimer(self.device, log)])  # fmt: skip
            trainer.fit(self.model, [{"input_ids": r, "labels": r} for r in rows[: batch * steps]])
        finally:
            session_log.removeHandler(decision)
            session_log.setLevel(previous_level)
            shutil.rmtree(out, ignore_errors=True)
        self.memory = decision.text or self.memory
        return log
