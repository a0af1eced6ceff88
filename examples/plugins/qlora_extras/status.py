"""A callback kind, `status_file`: keep a small JSON file up to date with where the run is, for a dashboard
or a job monitor that should not parse logs (step, total steps, last logged loss, running or finished).

    train: {callbacks: [{kind: status_file, path: runs/status.json}]}
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from qlora_kit import Callback, StrictModel, callbacks
from qlora_kit.files import atomic_write_json


@callbacks.register("status_file")
class StatusFile(Callback):
    """Write the run's progress (step, loss, running/finished) to a JSON file after every step."""

    class Options(StrictModel):
        path: str
        """The JSON file to keep up to date (written atomically: a reader never sees half of it)."""

    def __init__(self, config: Any):
        self.path = Path(config.path)
        self.last: dict[str, Any] = {}

    def on_train_begin(self, state: Any) -> None:
        self._write(state, "running")

    def on_step_end(self, state: Any, metrics: dict[str, Any]) -> None:
        if "loss" in metrics:  # only steps that logged carry a loss
            self.last = {"loss": metrics["loss"], "loss_step": state.step}
        self._write(state, "running")

    def on_train_end(self, state: Any) -> None:
        self._write(state, "finished")

    def _write(self, state: Any, status: str) -> None:
        from accelerate import PartialState

        if PartialState().is_main_process:  # one writer when the run spans several processes
            atomic_write_json(self.path, {
                "status": status, "step": state.step, "total_steps": state.total_steps, **self.last,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })  # fmt: skip
