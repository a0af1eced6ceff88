"""The trainer's progress, saved with every checkpoint in ``trainer_state.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainerState:
    """Where a run is; callbacks read it and may set ``should_stop``.

    ``step_in_epoch`` counts the accumulation windows already consumed in ``epoch``: with the data
    order reproducible from ``(seed, epoch)``, it is all a resumed run needs to skip to the next batch.
    ``schedule_step`` counts learning-rate schedule steps (an fp16 overflow skips one).
    """

    total_steps: int
    steps_per_epoch: int
    run_id: str = ""
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    schedule_step: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    best_eval_loss: float | None = None
    evals_without_improvement: int = 0
    zero_grad_steps: int = 0
    should_stop: bool = False
    fingerprints: dict[str, Any] = field(default_factory=dict)

    @property
    def epoch_float(self) -> float:
        """Epochs done, fractional (e.g. 1.5 halfway through the second epoch)."""
        return self.epoch + self.step_in_epoch / max(1, self.steps_per_epoch)

    @property
    def finished(self) -> bool:
        """All steps done, or a callback or guard asked to stop."""
        return self.step >= self.total_steps or self.should_stop

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        """Inverse of :meth:`to_dict` (unknown keys from newer versions are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
