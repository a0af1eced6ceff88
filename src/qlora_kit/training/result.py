"""What :meth:`~qlora_kit.training.Trainer.fit` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    """Wall seconds of :meth:`~qlora_kit.training.Trainer.fit` from its start to its last checkpoint (setup,
    steps, evaluations and checkpoints); drawing the loss curve and closing the logs come after."""
    peak_memory_gb: float | None
    """Peak CUDA memory allocated by this process (None on CPU)."""
    checkpoints: list[str] = field(default_factory=list)
    stopped_early: bool = False
    resumed_from: str | None = None
    """The checkpoint this run continued from, if it resumed."""
