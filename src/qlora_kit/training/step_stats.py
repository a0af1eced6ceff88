"""A step's loss and gradient norm read one step late, so the host never waits for the device mid-run.

The loop needs two numbers per optimizer step: the summed loss (to check it is finite before the update, and
to log it) and the gradient norm. Reading them right away (``.tolist()``) makes the host wait for the
step's forward and backward passes; while it then updates, logs and lays out the next step, the device
idles. On W1 (distilgpt2, ~2,100 tokens a step on an H200) a step's device work is about as long as the
host's, so that wait is a large share of the step.

Where the optimizer can skip its own update on the device (torch's fused Adam/AdamW read a ``found_inf``
tensor, as GradScaler uses them), the loop instead:

1. hands the optimizer ``found_inf = not isfinite(loss and norm)``: a non-finite step changes no weight,
   as the synchronous check guarantees;
2. copies the two numbers to pinned host memory without waiting (:func:`send_to_host`);
3. reads them (:meth:`PendingStep.read`) at the next step, once that step's passes are queued, or
   earlier when something needs them (a log line, an evaluation, a checkpoint, the end), and only then
   runs the checks and records the loss: an error still names the step whose loss was not finite.

Elsewhere (bitsandbytes' optimizers, CPUs, several processes) the loop reads them at once, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

DEFERRING_DEVICES = {"cuda"}
"""Devices where the numbers are read one step late: where kernels run asynchronously (tests add "cpu")."""


@dataclass
class PendingStep:
    """One step's ``[loss sum, grad norm]`` on its way to the host."""

    step: int
    n_tokens: int
    numbers: torch.Tensor
    ready: Any = None  # a CUDA event recorded after the copy, or None when the copy was synchronous

    def read(self) -> tuple[float, float]:
        """The step's summed loss and gradient norm (waits for the copy, not for later work)."""
        if self.ready is not None:
            self.ready.synchronize()
        total, norm = self.numbers.tolist()
        return total, norm


def defers(optimizer: Any, device: torch.device, processes: int) -> bool:
    """Whether the loop reads each step's numbers one step late: one process, a device in
    :data:`DEFERRING_DEVICES`, no fp16 gradient scaler, and an optimizer that skips its update when handed
    ``found_inf``."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
    return (
        processes == 1
        and getattr(optimizer, "scaler", None) is None  # fp16's GradScaler sets found_inf itself
        and device.type in DEFERRING_DEVICES
        and bool(getattr(inner, "_step_supports_amp_scaling", False))
        and all(group.get("fused") for group in inner.param_groups)
    )


def skip_update_unless_finite(optimizer: Any, numbers: torch.Tensor) -> None:
    """Make the next ``optimizer.step()`` a no-op on the device when any of ``numbers`` is not finite."""
    inner = getattr(optimizer, "optimizer", optimizer)
    inner.found_inf = (~torch.isfinite(numbers).all()).float()


def send_to_host(numbers: torch.Tensor, step: int, n_tokens: int) -> PendingStep:
    """Start copying ``numbers`` to the host without waiting for the device."""
    if numbers.device.type != "cuda":
        return PendingStep(step, n_tokens, numbers.detach().clone())
    host = torch.empty(numbers.shape, dtype=numbers.dtype, pin_memory=True)
    host.copy_(numbers.detach(), non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return PendingStep(step, n_tokens, host, ready)
