"""The ``profile`` callback: torch.profiler around a few optimizer steps, summarised for a person.

``train.callbacks: [{kind: profile, start: 20, steps: 10}]`` profiles steps 21-30 and writes into
``path`` (default ``profile/`` in the run's output directory; ``rank-N/`` below it in a run of several
processes, each profiling itself):

- ``ops.txt``: torch.profiler's op table, sorted by device time (CPU time where there is no GPU), and
  ``ops_host.txt`` (on a GPU) the same sorted by the host's time;
- ``summary.json``: wall seconds per step, device-busy seconds per step, kernel launches and host-device
  synchronisations per step. A step whose device is busy for a small part of its wall time is bound by
  the host (Python, launches, syncs), not by the GPU's arithmetic: that is what the summary is for.
- ``trace.json`` (``trace: true``): the Chrome/Perfetto timeline.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from qlora_kit.registry import callbacks
from qlora_kit.strict import StrictModel
from qlora_kit.training.callbacks import Callback
from qlora_kit.training.state import TrainerState

logger = logging.getLogger(__name__)

# Runtime calls that make the host wait for the device (their count per step is what to drive to zero).
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
LAUNCH_EVENTS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


@callbacks.register("profile")
class ProfileSteps(Callback):
    """Profile ``steps`` optimizer steps after the first ``start`` (warm-up) and write a summary."""

    class Options(StrictModel):
        start: int = Field(default=10, ge=0)
        """Steps run before profiling starts (warm-up: allocator, kernels chosen, caches filled)."""
        steps: int = Field(default=5, gt=0)
        """Steps profiled."""
        path: str = "profile"
        """Folder the op tables, summary (and trace) are written to; relative to the run's output dir."""
        trace: bool = False
        """Also write the Chrome/Perfetto trace (large: megabytes per step)."""

    def __init__(self, config: Any):
        self.cfg = config
        self.out = Path(config.path)
        self._profiler: Any = None
        self._started = 0.0
        self._first_step = 0

    def on_setup(self, output_dir: str) -> None:
        self.out = Path(output_dir) / self.cfg.path  # an absolute path stays as it is
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # set by torchrun and accelerate launch
            self.out = self.out / f"rank-{os.environ.get('RANK', '0')}"

    def on_train_begin(self, state: TrainerState) -> None:
        if self.cfg.start == 0:
            self._begin(state)

    def on_step_end(self, state: TrainerState, metrics: dict[str, Any]) -> None:
        if self._profiler is None and state.step == self.cfg.start:
            self._begin(state)
        elif self._profiler is not None and state.step >= self._first_step + self.cfg.steps - 1:
            self._end(state)

    def on_train_end(self, state: TrainerState) -> None:
        if self._profiler is not None:  # the run ended inside the profiled window
            self._end(state)

    def _begin(self, state: TrainerState) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
            torch.cuda.synchronize()
        self._profiler = profile(activities=activities)
        self._profiler.__enter__()
        self._first_step = state.step + 1
        self._started = time.perf_counter()

    def _end(self, state: TrainerState) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - self._started
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(None, None, None)
        steps = max(1, state.step - self._first_step + 1)
        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        events = profiler.key_averages()
        summary = summarise(events, wall, steps)
        summary["steps_profiled"] = [self._first_step, state.step]
        sort_key = "self_device_time_total" if summary["device"] else "self_cpu_time_total"
        (out / "ops.txt").write_text(_table(events, sort_key), encoding="utf-8")
        if summary["device"]:  # where the host's time goes: launches, syncs, Python-side op overhead
            (out / "ops_host.txt").write_text(_table(events, "self_cpu_time_total"), encoding="utf-8")
        (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        if self.cfg.trace:
            profiler.export_chrome_trace(str(out / "trace.json"))
        logger.info(
            "profiled steps %d-%d: %.1f ms per step, device busy %.0f%%, %.0f kernel launches and %.1f syncs "
            "per step (%s)",
            self._first_step, state.step, 1000 * summary["wall_s_per_step"], 100 * summary["device_busy_fraction"],
            summary["launches_per_step"], summary["syncs_per_step"], out,
        )  # fmt: skip


def summarise(events: Any, wall_s: float, steps: int) -> dict[str, Any]:
    """Per-step wall time, device time, launches and syncs from profiler ``key_averages()``."""
    device_us = sum(getattr(e, "self_device_time_total", 0) for e in events if _is_kernel(e))
    launches = sum(e.count for e in events if e.key in LAUNCH_EVENTS)
    syncs = sum(e.count for e in events if e.key in SYNC_EVENTS)
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    return {
        "device": device_us > 0,
        "wall_s_per_step": wall_s / steps,
        "device_s_per_step": device_us / 1e6 / steps,
        "device_busy_fraction": min(1.0, device_us / 1e6 / wall_s) if wall_s else 0.0,
        "launches_per_step": launches / steps,
        "syncs_per_step": syncs / steps,
        "aten_ops_per_step": ops / steps,
        "syncs_per_step_by_call": {e.key: e.count / steps for e in events if e.key in SYNC_EVENTS},
    }


def _table(events: Any, sort_key: str) -> str:
    return events.table(sort_by=sort_key, row_limit=60, max_name_column_width=70)


def _is_kernel(event: Any) -> bool:
    """A device-side event (kernel or memcpy), not a host op that launched it."""
    device_type = str(getattr(event, "device_type", ""))
    return device_type.endswith("CUDA") and getattr(event, "self_device_time_total", 0) > 0
