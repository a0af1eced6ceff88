"""``metrics.jsonl``, the loss-curve PNG, Accelerate trackers (tensorboard, wandb), and the progress
display (:mod:`qlora_kit.training.progress`)."""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qlora_kit.errors import ConfigError, storage_error
from qlora_kit.files import atomic_write_bytes, atomic_write_text, writing
from qlora_kit.training.progress import TrainProgress

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"


def check_trackers(names: Iterable[str]) -> None:
    """Fail before training when a tracker of `train.trackers` is not installed.

    Accelerate only warns and drops a tracker whose package is missing, so a run would train for
    hours without logging where it was asked to. Call this before loading the model.

    Raises:
        ConfigError: at ``train.trackers``, with the install command.
    """
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    missing = [name for name in names if name in available and not available[name]()]
    if missing:
        install = " ".join(f"pip install 'qlora_kit[{name}]'" for name in missing)
        raise ConfigError(
            [("train.trackers", f"{', '.join(missing)} not installed: {install}, or leave it out")]
        )


class MetricsLogger:
    """Everything a run reports, written by the main process only.

    Each record is a dict with at least ``step``; train records carry ``loss``, ``lr``, ``grad_norm``,
    ``tokens`` and ``tokens_per_s``, eval records ``eval_loss`` and ``eval_perplexity``.
    """

    def __init__(
        self, accelerator: Any, output_dir: Path, total_steps: int, start_step: int = 0, log_every: int = 1
    ):
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.path = Path(output_dir) / METRICS_FILE
        self.history: list[dict[str, Any]] = []
        if self.main:
            self._truncate_after(start_step)
        self.progress = TrainProgress(total_steps, start_step, log_every, enabled=self.main)
        self._window_start = time.perf_counter()
        self._window_tokens = 0

    def count_tokens(self, tokens: int) -> None:
        """Add input tokens processed since the last log line (for tokens/s)."""
        self._window_tokens += tokens

    def log_train(self, step: int, record: dict[str, Any]) -> dict[str, Any]:
        """Log a train record, with throughput measured since the previous one."""
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        record = {"step": step, **record, "tokens_per_s": round(self._window_tokens / elapsed, 1)}
        self._window_start, self._window_tokens = time.perf_counter(), 0
        self.progress.logged(record)
        return self.log(record)

    def log(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append ``record`` to the history, ``metrics.jsonl`` and the trackers."""
        self.history.append(record)
        self.progress.evaluated(record)
        if self.main:
            with writing(self.path), self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.accelerator.trackers:
            self.accelerator.log(numbers, step=record["step"])
        return record

    def advance(self, loss: float | None = None) -> None:
        """One optimizer step done, with its loss (shown from the first step on)."""
        self.progress.advance(loss)

    def close(self) -> None:
        """Close the progress display and draw the loss curve."""
        self.progress.close()
        if self.main:
            plot_loss_curve(self.history, self.path.with_name(LOSS_CURVE_FILE))

    def exclude_time(self, seconds: float) -> None:
        """Leave ``seconds`` (an evaluation, a checkpoint) out of the next tokens/s."""
        self._window_start += seconds

    def _truncate_after(self, step: int) -> None:
        self.history = truncate_jsonl(self.path, step)


def truncate_jsonl(path: Path, step: int) -> list[dict[str, Any]]:
    """Keep the records of ``path`` up to ``step`` and return them.

    A resumed run rewrites the steps after its checkpoint (and a fresh run, from step 0, all of
    them), so the interrupted run's copies are dropped instead of appearing twice. A line that is not
    a JSON record with a ``step`` (a writer killed mid-line leaves a torn last line) is dropped with a
    warning naming the file and line.
    """
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise storage_error(exc, path, "reading") from exc
    kept = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = _record(line)
        if record is None:
            logger.warning("%s line %d: not a complete JSON record (a torn write?); dropped", path, number)
        elif record["step"] <= step:
            kept.append(record)
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))
    return kept


def _record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    ok = isinstance(record, dict) and isinstance(record.get("step"), (int, float))
    return record if ok else None


def plot_loss_curve(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Train (and eval) loss against step, as a PNG (matplotlib's Agg backend: no display needed).

    The image is rendered in memory and written atomically: a full disk raises StorageError naming
    ``path`` and never leaves an empty or partial PNG.
    """
    fig = loss_figure(history)
    if fig is None:
        return None
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return atomic_write_bytes(path, buffer.getvalue())


LOG_SCALE_RATIO = 20.0
"""A loss curve whose largest value is this many times its smallest is drawn on a log scale."""


def loss_figure(history: list[dict[str, Any]]) -> Any:
    """The loss-curve figure (None without a finite loss). The y axis is logarithmic when the losses
    span more than :data:`LOG_SCALE_RATIO` (a loss falling from 10 to 0.01 is a flat line otherwise)."""
    train = [(r["step"], r["loss"]) for r in history if _finite(r.get("loss"))]
    evals = [(r["step"], r["eval_loss"]) for r in history if _finite(r.get("eval_loss"))]
    if not train and not evals:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    losses = [loss for _, loss in train + evals]
    log_scale = min(losses) > 0 and max(losses) / min(losses) > LOG_SCALE_RATIO
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / supervised token)" + (", log scale" if log_scale else ""))
    ax.grid(alpha=0.3, which="both" if log_scale else "major")
    ax.legend()
    fig.tight_layout()
    return fig


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
